#!/usr/bin/env bash
# Installs qllm's dependencies from Debian 12's packages (skipped when present).
#   install-deps.sh [--tests] [PACKAGE...]
# Without --tests: what the library and the qllm tool need to build (the demo). Extra packages
# may be named as arguments (CI adds the cross compiler and qemu). --tests adds what the test
# suites use: doctest, Google Benchmark, cmake (doctest's lookup), abigail-tools, cargo, bindgen, curl,
# Debian's Python with venv, setuptools, wheel, pytest and NumPy (the Python package's tests) and
# jsonschema (the independent judge of grammar-constrained JSON),
# Node.js with npm and the `openai` client package (pinned in tests/serve/package-lock.json,
# installed into tests/serve/node_modules), and nginx, whose Debian package is unpacked into
# .cache/nginx rather than installed (no web server service appears). A failure to fetch the npm
# package is a warning: the suites that need it report themselves skipped, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0
if [ "${1:-}" = --tests ]; then tests=1; shift; fi
pkgs=(g++ gcc meson ninja-build pkg-config libxsimd-dev libsentencepiece-dev nlohmann-json3-dev libsqlite3-dev
      libsimde-dev libcpp-httplib-dev "$@")
if [ $tests = 1 ]; then
  pkgs+=(cmake doctest-dev libbenchmark-dev python3 binutils abigail-tools curl
         python3-venv python3-setuptools python3-wheel python3-pytest python3-numpy python3-jsonschema)
  # the Rust crates need cargo (a rustup toolchain already on PATH is fine too); bindgen checks
  # that rust/qllm-sys's declarations are the header's
  command -v cargo >/dev/null || pkgs+=(cargo)
  pkgs+=(bindgen)
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
say() { printf 'qllm: %s\n' "$*" >&2; }
if [ ${#missing[@]} != 0 ]; then
  say "installing ${#missing[@]} Debian packages with apt-get: ${missing[*]}"
  $SUDO apt-get update -qq
  updated=1
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ $tests = 1 ] || exit 0
if [ ! -x .cache/nginx/usr/sbin/nginx ]; then
  [ $updated = 1 ] || $SUDO apt-get update -qq
  say "unpacking Debian's nginx into .cache/nginx (the load-balancer test; not installed as a service)"
  tmp=$(mktemp -d)
  # apt downloads as its sandbox user: the folder must be its to write (else apt warns, every run)
  if id _apt >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then chown _apt "$tmp"; fi
  (cd "$tmp" && apt-get download -qq nginx >/dev/null)
  mkdir -p .cache/nginx
  dpkg-deb -x "$tmp"/nginx_*.deb .cache/nginx
  rm -rf "$tmp"
fi
if [ ! -f tests/serve/node_modules/openai/package.json ]; then
  say "installing the openai npm package (pinned) into tests/serve/node_modules"
  mkdir -p .cache
  if ! npm ci --prefix tests/serve --no-audit --no-fund --loglevel=error >/dev/null 2>.cache/npm-ci.log; then
    # one unreachable registry must not cost the other suites: the client tests skip, saying why
    mkdir -p .cache
    why=$(grep -m1 -E 'npm (ERR!|error) (code|network|errno)' .cache/npm-ci.log || tail -n 1 .cache/npm-ci.log)
    echo "npm ci failed (${why:-no message}); log: .cache/npm-ci.log" >.cache/npm-unavailable
    say "warning: $(cat .cache/npm-unavailable): the openai client tests will be skipped"
  fi
fi
[ ! -f tests/serve/node_modules/openai/package.json ] || rm -f .cache/npm-unavailable
