#!/usr/bin/env bash
# Installs qllm's build and test dependencies from Debian 12's packages (skipped when present).
# Extra packages may be named as arguments (CI adds the cross compiler and qemu).
set -euo pipefail
pkgs=(g++ gcc meson ninja-build pkg-config cmake libxsimd-dev libsentencepiece-dev nlohmann-json3-dev libsqlite3-dev doctest-dev
      libbenchmark-dev libsimde-dev libcpp-httplib-dev python3 binutils abigail-tools "$@")
# the Rust example needs cargo; a rustup toolchain already on PATH is fine too
command -v cargo >/dev/null || pkgs+=(cargo)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
