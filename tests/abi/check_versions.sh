#!/bin/sh
# Symbol versions of libqllm.so.0, one node per minor (capi/qllm.map):
#  1. the frozen headers tests/abi/qllm_0_N_0.h are never edited (checksums committed);
#  2. each function a frozen header adds over the previous one is exported as name@@QLLM_0.N,
#     and every function of capi/qllm.h is in some frozen header (the current minor is frozen);
#  3. a program compiled against the 0.2.0 header needs only QLLM_0.2 versions;
#  4. a program linked against a 0.2.0-era library (every symbol under the node QLLM_0) still
#     loads and runs against this one.
# usage: check_versions.sh LIBQLLM.so FROZEN_CALLER SOURCE_ROOT
set -eu
lib="$1"; frozen="$2"; src="$3"
abi="$src/tests/abi"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

(cd "$abi" && sha256sum -c --quiet frozen_headers.sha256) || {
  echo "a frozen header was edited: freeze a new minor instead (tests/abi/frozen_headers.sha256)"
  exit 1
}

fns() { grep -o 'QLLM_API [^(]*(' "$1" | grep -o 'qllm_[a-z0-9_]*[[:space:]]*($' | tr -d ' (' | LC_ALL=C sort -u; }
nm -D --defined-only "$lib" | awk '{print $3}' >"$dir/exported"
: >"$dir/prev"
for h in $(ls "$abi"/qllm_0_*_0.h | LC_ALL=C sort -t_ -k3,3n); do
  minor=$(basename "$h" | sed 's/^qllm_0_\([0-9]*\)_0\.h$/\1/')
  fns "$h" >"$dir/now"
  for f in $(LC_ALL=C comm -13 "$dir/prev" "$dir/now"); do
    grep -qx "$f@@QLLM_0.$minor" "$dir/exported" || { echo "$f (new in 0.$minor) is not exported as $f@@QLLM_0.$minor"; exit 1; }
  done
  cat "$dir/prev" "$dir/now" | LC_ALL=C sort -u >"$dir/all"
  mv "$dir/all" "$dir/prev"
done
fns "$src/capi/qllm.h" >"$dir/current"
missing=$(LC_ALL=C comm -23 "$dir/current" "$dir/prev")
[ -z "$missing" ] || { echo "not in any frozen header (freeze tests/abi/qllm_0_N_0.h): $missing"; exit 1; }

needs=$(objdump -T "$frozen" | awk '/qllm_/ {print $(NF-1)}' | sort -u)
[ "$needs" = "(QLLM_0.2)" ] || { echo "the 0.2.0 caller needs versions: $needs"; exit 1; }

# a library as 0.2.0 builds made it: every symbol under QLLM_0
cat >"$dir/old.c" <<'C'
unsigned qllm_version(void) { return 200; }
const char* qllm_version_string(void) { return "0.2.0"; }
C
printf 'QLLM_0 { global: qllm_*; local: *; };\n' >"$dir/old.map"
mkdir "$dir/old" "$dir/new"
cc -shared -fPIC "$dir/old.c" -Wl,--version-script="$dir/old.map" -Wl,-soname,libqllm.so.0 -o "$dir/old/libqllm.so.0"
ln -s libqllm.so.0 "$dir/old/libqllm.so"
cat >"$dir/prog.c" <<'C'
#include <stdio.h>
unsigned qllm_version(void);
const char* qllm_version_string(void);
int main(void) { printf("%u %s\n", qllm_version(), qllm_version_string()); return 0; }
C
cc "$dir/prog.c" -L"$dir/old" -lqllm -o "$dir/prog"
objdump -T "$dir/prog" | grep -q '(QLLM_0) *qllm_version$'
ln -s "$(readlink -f "$lib")" "$dir/new/libqllm.so.0"
out=$(LD_LIBRARY_PATH="$dir/new" "$dir/prog")
echo "old program against this library: $out"
ver() { sed -n "s/^#define QLLM_VERSION_$1 \([0-9]*\)$/\1/p" "$src/capi/qllm.h"; }
want="$(( $(ver MAJOR) * 10000 + $(ver MINOR) * 100 + $(ver PATCH) )) $(ver MAJOR).$(ver MINOR).$(ver PATCH)"
[ "$out" = "$want" ] || { echo "expected this library's version ($want)"; exit 1; }
echo "symbol versions: ok"
