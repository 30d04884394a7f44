// Finds libqllm and links it: QLLM_LIB_DIR, else an installed qllm through pkg-config, else the
// checkout's build/ (see src/lib.rs). A library found in a directory is copied into OUT_DIR,
// which cargo puts on the loader's path for `cargo run` and `cargo test`.
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIN_VERSION: &str = "0.6.0";

fn pkg_config() -> Option<Vec<String>> {
    let ok = Command::new("pkg-config")
        .args(["--atleast-version", MIN_VERSION, "qllm"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return None;
    }
    let out = Command::new("pkg-config").args(["--libs-only-L", "qllm"]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.split_whitespace().filter_map(|a| a.strip_prefix("-L")).map(String::from).collect())
}

// The real file behind libqllm.so in dir, if there is one.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let so = dir.join("libqllm.so");
    if so.exists() {
        fs::canonicalize(so).ok()
    } else {
        None
    }
}

fn use_dir(dir: &Path, why: &str) {
    let real = library_in(dir).unwrap_or_else(|| {
        panic!("qllm-sys: {} names {}, which has no libqllm.so", why, dir.display())
    });
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let so0 = out.join("libqllm.so.0");
    let so = out.join("libqllm.so");
    let _ = fs::remove_file(&so0);
    let _ = fs::remove_file(&so);
    fs::copy(&real, &so0).unwrap_or_else(|e| panic!("qllm-sys: copying {}: {}", real.display(), e));
    std::os::unix::fs::symlink("libqllm.so.0", &so).expect("qllm-sys: symlink in OUT_DIR");
    println!("cargo:rerun-if-changed={}", real.display());
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:lib_dir={}", out.display());
}

fn main() {
    println!("cargo:rerun-if-env-changed=QLLM_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let in_tree = manifest.join("../../build");
    println!("cargo:rerun-if-changed={}", in_tree.join("libqllm.so").display());
    if let Ok(dir) = env::var("QLLM_LIB_DIR") {
        use_dir(Path::new(&dir), "QLLM_LIB_DIR");
    } else if let Some(dirs) = pkg_config() {
        for d in dirs {
            println!("cargo:rustc-link-search=native={}", d);
        }
    } else if library_in(&in_tree).is_some() {
        use_dir(&in_tree, "the checkout's build directory");
    } else {
        panic!(
            "qllm-sys: libqllm not found. Set QLLM_LIB_DIR to the directory holding libqllm.so, \
             install qllm (pkg-config qllm >= {}), or build it in the checkout (./scripts/demo.sh \
             builds {}).",
            MIN_VERSION,
            in_tree.display()
        );
    }
    println!("cargo:rustc-link-lib=dylib=qllm");
}
