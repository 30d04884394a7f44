#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: installs the dependencies, builds qllm, and runs its
# main job: text generation, streamed, from the shipped default model (a small Llama-2 trained on
# the King James Bible, models/tiny-kjv.q8_0.gguf). Pass a GGUF file to use your own:
#   ./scripts/demo.sh [MODEL.gguf] [PROMPT]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build
ninja -C build
./build/examples/qllm info
model=()
[ -n "${1:-}" ] && model=(-m "$1")
./build/examples/qllm run "${model[@]}" -p "${2:-And God said unto Noah,}" -n 64 --temp 0.7 --seed 1
