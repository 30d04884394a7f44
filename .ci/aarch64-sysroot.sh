#!/usr/bin/env bash
# An aarch64 sysroot for the full cross build: Debian's arm64 sentencepiece and SQLite packages, unpacked
# (not installed: libsentencepiece-dev is not Multi-Arch: same, so its arm64 copy would replace
# the amd64 one). The C/C++ runtime comes with g++-aarch64-linux-gnu (/usr/aarch64-linux-gnu).
#   .ci/aarch64-sysroot.sh DIR
set -euo pipefail
dest=$1
pkgs=(libsentencepiece-dev:arm64 libsentencepiece0:arm64 libsqlite3-dev:arm64 libsqlite3-0:arm64)
# done, and for this package list
if [ -f "$dest/.done" ] && [ "$(cat "$dest/.done")" = "${pkgs[*]}" ]; then exit 0; fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq "${pkgs[@]}" >/dev/null) || {
  apt-get update -qq
  (cd "$tmp" && apt-get download -qq "${pkgs[@]}" >/dev/null)
}
mkdir -p "$dest"
for d in "$tmp"/*.deb; do dpkg -x "$d" "$dest"; done
echo "${pkgs[*]}" > "$dest/.done"
echo "aarch64 sysroot in $dest: $(ls "$tmp")"
