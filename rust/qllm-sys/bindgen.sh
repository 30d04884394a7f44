#!/bin/sh
# Writes src/bindings.rs from capi/qllm.h (bindgen 0.60, Debian 12's `bindgen` package):
#   rust/qllm-sys/bindgen.sh [OUT]      (OUT defaults to src/bindings.rs)
# tests/bindings/rust_sys_bindings.sh runs it and compares with the committed file, so the Rust
# declarations cannot drift from the header.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/src/bindings.rs}
bindgen "$here/../../capi/qllm.h" \
  --allowlist-function 'qllm_.*' --allowlist-type 'qllm_.*' --allowlist-var 'QLLM_.*' \
  --size_t-is-usize --no-doc-comments --with-derive-default \
  --raw-line '#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, deref_nullptr, clippy::all)]' \
  -o "$out" -- -I"$here/../../capi"
