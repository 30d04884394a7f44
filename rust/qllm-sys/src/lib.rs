//! Raw declarations of qllm's C ABI: `capi/qllm.h`, as bindgen writes it (`bindgen.sh`; a test
//! regenerates the file and compares, so the declarations follow the header). Everything here is
//! `unsafe` to call and follows the header's rules (buffer convention, `struct_size`, the session
//! thread rule); the `qllm` crate is the safe interface on top.
//!
//! `build.rs` finds libqllm in this order: the directory in `QLLM_LIB_DIR`; an installed qllm
//! that pkg-config knows (`qllm.pc`, version 0.9.0 or newer); the checkout's own `build/`
//! directory (what `scripts/demo.sh` builds). It copies a library it found in a directory into
//! the build's output directory, so `cargo run` and `cargo test` find it at run time; a program
//! started any other way needs libqllm.so.0 on the loader's path (installed, or
//! `LD_LIBRARY_PATH`).
//!
//! ```
//! // the library's version is the header's (major.minor.patch as major*10000 + minor*100 + patch)
//! let v = unsafe { qllm_sys::qllm_version() };
//! assert!(v >= qllm_sys::QLLM_VERSION_NUMBER);
//! ```

mod bindings;
pub use bindings::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn the_library_is_the_headers_version() {
        let v = unsafe { qllm_version() };
        assert_eq!(v / 100, QLLM_VERSION_NUMBER / 100, "libqllm {} against qllm.h {}", v, QLLM_VERSION_NUMBER);
        let s = unsafe { CStr::from_ptr(qllm_version_string()) }.to_str().unwrap();
        assert!(s.starts_with(&format!("{}.{}.", QLLM_VERSION_MAJOR, QLLM_VERSION_MINOR)), "{}", s);
    }

    #[test]
    fn a_null_handle_is_an_error_not_a_crash() {
        let mut info: qllm_model_info = unsafe { std::mem::zeroed() };
        info.struct_size = std::mem::size_of::<qllm_model_info>() as u32;
        let st = unsafe { qllm_model_get_info(std::ptr::null(), &mut info) };
        assert_eq!(st, QLLM_ERR_INVALID_ARGUMENT as qllm_status);
        let name = unsafe { CStr::from_ptr(qllm_status_name(st)) }.to_str().unwrap();
        assert_eq!(name, "QLLM_ERR_INVALID_ARGUMENT");
        let msg = unsafe { CStr::from_ptr(qllm_last_error()) }.to_str().unwrap();
        assert!(!msg.is_empty());
    }

    #[test]
    fn params_init_fills_the_documented_defaults() {
        let mut p: qllm_session_params = unsafe { std::mem::zeroed() };
        let st = unsafe { qllm_session_params_init(&mut p, std::mem::size_of::<qllm_session_params>()) };
        assert_eq!(st, QLLM_OK as qllm_status);
        assert_eq!(p.struct_size as usize, std::mem::size_of::<qllm_session_params>());
        assert_eq!(p.n_batch, 512);
        assert_eq!(p.top_k, 40);
        assert!((p.temperature - 0.8).abs() < 1e-6);
    }
}
