// Links libqllm.so: QLLM_LIB_DIR names the directory (a meson build dir), else the system paths.
fn main() {
    println!("cargo:rerun-if-env-changed=QLLM_LIB_DIR");
    if let Ok(dir) = std::env::var("QLLM_LIB_DIR") {
        println!("cargo:rustc-link-search=native={}", dir);
    }
    println!("cargo:rustc-link-lib=dylib=qllm");
}
