#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: installs what the build needs, builds the qllm tool
# (only it and the library: the test suites are scripts/test.sh's), and runs its main job: text
# generation, streamed, from the shipped default model (a small Llama-2 trained on the King
# James Bible, models/tiny-kjv.q8_0.gguf). Pass a GGUF file to use your own:
#   ./scripts/demo.sh [MODEL.gguf] [PROMPT]
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'qllm demo: %s\n' "$*" >&2; }
t0=$(date +%s)
say "checking the build dependencies (Debian packages)"
./scripts/install-deps.sh
if [ ! -f build/build.ninja ]; then
  say "configuring the build (meson, release, in ./build)"
  mkdir -p .cache
  meson setup build -Dtests=false -Dbench=disabled >.cache/meson-setup.log 2>&1 || {
    cat .cache/meson-setup.log >&2
    exit 1
  }
fi
steps=$(ninja -C build -n examples/qllm | grep -c '^\[' || true)
if [ "$steps" -gt 0 ]; then
  say "building the qllm tool: $steps steps on $(nproc) cores (a few minutes on 2 cores; the test suites are not built)"
  ninja -C build examples/qllm
fi
say "ready in $(( $(date +%s) - t0 )) s; generating text:"
./build/examples/qllm info
model=()
[ -n "${1:-}" ] && model=(-m "$1")
./build/examples/qllm run "${model[@]}" -p "${2:-And God said unto Noah,}" -n 64 --temp 0.7 --seed 1
