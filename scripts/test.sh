#!/usr/bin/env bash
# Installs what is missing, builds qllm (release with debug info) and runs every test suite:
# kernels on every ISA this build has, model, tokenizer, sessions, CLI, C ABI, Python and Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --tests
werror=()
[ "${QLLM_WERROR:-0}" = 1 ] && werror=(--werror)
if [ ! -f build/build.ninja ]; then
  meson setup build "${werror[@]}"
elif [ "${QLLM_WERROR:-0}" = 1 ]; then
  meson configure build --werror
fi
ninja -C build
meson test -C build --print-errorlogs
