#!/usr/bin/env bash
# Installs qllm's build and test dependencies from Debian 12's packages (skipped when present).
#   install-deps.sh [--tests] [PACKAGE...]
# Extra packages may be named as arguments (CI adds the cross compiler and qemu). --tests adds
# what only the server's tests use: curl, Node.js with npm and the `openai` client package
# (pinned in tests/serve/package-lock.json, installed into tests/serve/node_modules), and nginx,
# whose Debian package is unpacked into .cache/nginx rather than installed (no web server
# service appears).
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0
if [ "${1:-}" = --tests ]; then tests=1; shift; fi
pkgs=(g++ gcc meson ninja-build pkg-config cmake libxsimd-dev libsentencepiece-dev nlohmann-json3-dev libsqlite3-dev doctest-dev
      libbenchmark-dev libsimde-dev libcpp-httplib-dev python3 binutils abigail-tools "$@")
# the Rust example needs cargo; a rustup toolchain already on PATH is fine too
command -v cargo >/dev/null || pkgs+=(cargo)
if [ $tests = 1 ]; then
  pkgs+=(curl)
  command -v node >/dev/null || pkgs+=(nodejs)
  command -v npm >/dev/null || pkgs+=(npm)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
updated=0
if [ ${#missing[@]} != 0 ]; then
  $SUDO apt-get update -qq
  updated=1
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ $tests = 1 ] || exit 0
if [ ! -x .cache/nginx/usr/sbin/nginx ]; then
  [ $updated = 1 ] || $SUDO apt-get update -qq
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq nginx >/dev/null)
  mkdir -p .cache/nginx
  dpkg-deb -x "$tmp"/nginx_*.deb .cache/nginx
  rm -rf "$tmp"
fi
if [ ! -f tests/serve/node_modules/openai/package.json ]; then
  npm ci --prefix tests/serve --no-audit --no-fund --loglevel=error >/dev/null
fi
