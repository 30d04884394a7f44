#!/usr/bin/env bash
# Builds qllm (release with debug info) and runs every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
werror=()
[ "${QLLM_WERROR:-0}" = 1 ] && werror=(--werror)
if [ ! -f build/build.ninja ]; then
  meson setup build "${werror[@]}"
elif [ "${QLLM_WERROR:-0}" = 1 ]; then
  meson configure build --werror
fi
ninja -C build
meson test -C build --print-errorlogs
