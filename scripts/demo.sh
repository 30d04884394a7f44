#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: installs the build dependencies, builds qllm and runs
# its main job. (Until the model issues land, the main job is `qllm info`.)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  g++ meson ninja-build pkg-config cmake libxsimd-dev libsentencepiece-dev doctest-dev \
  libbenchmark-dev libsimde-dev >/dev/null
[ -f build/build.ninja ] || meson setup build
ninja -C build
./build/examples/qllm info
