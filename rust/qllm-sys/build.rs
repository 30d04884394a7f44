// Finds libqllm and links it: QLLM_LIB_DIR, else an installed qllm through pkg-config, else the
// checkout's build/ (see src/lib.rs). A library found in a directory is copied into OUT_DIR,
// which cargo puts on the loader's path for `cargo run` and `cargo test`.
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// the C ABI this crate's declarations describe: 0.9 or a newer 0.x (soname libqllm.so.0)
const MIN: (u32, u32, u32) = (0, 9, 0);

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().unwrap_or(Some(0))?))
}

enum Found {
    Dirs(Vec<String>),
    WrongVersion(String),
    No,
}

fn pkg_config() -> Found {
    let out = match Command::new("pkg-config").args(["--modversion", "qllm"]).output() {
        Ok(o) if o.status.success() => o,
        _ => return Found::No,
    };
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match parse_version(&version) {
        Some(v) if v >= MIN && v.0 == MIN.0 => {}
        _ => return Found::WrongVersion(version),
    }
    let out = match Command::new("pkg-config").args(["--libs-only-L", "qllm"]).output() {
        Ok(o) if o.status.success() => o,
        _ => return Found::No,
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Found::Dirs(text.split_whitespace().filter_map(|a| a.strip_prefix("-L")).map(String::from).collect())
}

// The real file behind libqllm.so (or libqllm.so.0) in dir, if there is one.
fn library_in(dir: &Path) -> Option<PathBuf> {
    ["libqllm.so", "libqllm.so.0"].iter().map(|n| dir.join(n)).find(|p| p.exists()).and_then(|p| fs::canonicalize(p).ok())
}

fn use_dir(dir: &Path, why: &str) {
    let real = library_in(dir).unwrap_or_else(|| {
        panic!("qllm-sys: {} names {}, which holds no libqllm.so or libqllm.so.0", why, dir.display())
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
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let in_tree = manifest.join("../../build");
    let mut note = String::new();
    if let Ok(dir) = env::var("QLLM_LIB_DIR") {
        // build scripts run in the crate's own directory: a relative path would mean that one
        if !Path::new(&dir).is_absolute() {
            panic!("qllm-sys: QLLM_LIB_DIR must be an absolute path (it is {:?})", dir);
        }
        use_dir(Path::new(&dir), "QLLM_LIB_DIR");
    } else {
        match pkg_config() {
            Found::Dirs(dirs) => {
                // a library outside the default paths is copied where `cargo run` finds it
                match dirs.iter().map(Path::new).find(|d| library_in(d).is_some()) {
                    Some(d) => use_dir(d, "pkg-config qllm"),
                    None => {
                        for d in dirs {
                            println!("cargo:rustc-link-search=native={}", d);
                        }
                    }
                }
                println!("cargo:rustc-link-lib=dylib=qllm");
                return;
            }
            Found::WrongVersion(v) => {
                note = format!(" (pkg-config found qllm {}; this crate needs 0.x, at least {}.{}.{})", v, MIN.0, MIN.1, MIN.2)
            }
            Found::No => {}
        }
        if library_in(&in_tree).is_some() {
            // only when it exists: a missing file would make cargo rerun this script every build
            println!("cargo:rerun-if-changed={}", in_tree.join("libqllm.so").display());
            use_dir(&in_tree, "the checkout's build directory");
        } else {
            panic!(
                "qllm-sys: libqllm not found{}. Set QLLM_LIB_DIR to the directory holding libqllm.so, \
                 install qllm (pkg-config qllm, version 0.x >= {}.{}.{}), or build it in the checkout \
                 (./scripts/demo.sh builds {}).",
                note,
                MIN.0,
                MIN.1,
                MIN.2,
                in_tree.display()
            );
        }
    }
    println!("cargo:rustc-link-lib=dylib=qllm");
}
