#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: installs the dependencies, builds qllm, and runs its
# main job: text generation, streamed. With no model given it writes a small random-weight Llama
# model (the text is gibberish, the machinery is real); pass a GGUF file to use your own:
#   ./scripts/demo.sh [MODEL.gguf] [PROMPT]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build
ninja -C build
./build/examples/qllm info
model="${1:-build/demo-small.gguf}"
if [ -z "${1:-}" ] && [ ! -f "$model" ]; then
  ./build/examples/qllm gen-random --shape small --type q4_0 --out "$model"
fi
./build/examples/qllm run -m "$model" -p "${2:-Once upon a time}" -n 48 --temp 0.7 --seed 1
