#!/bin/sh
# The Rust crates (rust/qllm-sys, rust/qllm) and examples/rust, offline, against this build's
# libqllm.so:
#  1. each crate's tests and doc examples (cargo test), with QLLM_LIB_DIR naming the build;
#  2. the example programs: streamed greedy text equal to `qllm run`'s, retrieval with a report;
#  3. the README's Rust section as written, in a copy of the checkout whose build/ is this build
#     (the crate finds it there: no variable set);
#  4. the other ways build.rs finds the library: pkg-config (meson's uninstalled qllm.pc), and
#     none at all, which must fail the build saying what to do.
#   run_rust.sh QLLM_TOOL BUILD_DIR SOURCE_DIR TARGET_DIR
set -eu
qllm=$(readlink -f "$1"); libdir=$(readlink -f "$2"); src=$(readlink -f "$3"); target="$4"
. "$(dirname "$0")/prepare.sh"
"$qllm" gen-random --shape tiny --type q4_0 --seed 12 --no-vocab --out "$dir/nv.gguf" >/dev/null
unset QLLM_LIB_DIR PKG_CONFIG_PATH
export CARGO_TARGET_DIR="$target"
for crate in qllm-sys qllm; do
  (cd "$src/rust/$crate" && RUSTFLAGS="-D warnings" QLLM_LIB_DIR="$libdir" LD_LIBRARY_PATH="$libdir" QLLM_TEST_MODEL="$dir/m.gguf" \
     QLLM_TEST_EXPECTED="$dir/expected.txt" QLLM_TEST_NOVOCAB_MODEL="$dir/nv.gguf" QLLM_TEST_L3_MODEL="$dir/l3.gguf" cargo test --offline --quiet 2>&1)
done
cd "$src/examples/rust"
QLLM_LIB_DIR="$libdir" cargo run --offline --quiet --bin complete -- "$dir/m.gguf" "$prompt" 24 >"$dir/ex.txt"
printf '%s\n' "$(cat "$dir/expected.txt")" | cmp - "$dir/ex.txt"
mkdir "$dir/docs"
printf 'Staff get twenty days of leave each year.\n' >"$dir/docs/leave.txt"
printf 'The ark was made of gopher wood.\n' >"$dir/docs/ark.md"
QLLM_LIB_DIR="$libdir" cargo run --offline --quiet --bin rag -- "$src/models/tiny-kjv.q8_0.gguf" "$dir/db.sqlite" \
  "How many days of leave?" "$dir/docs" >"$dir/rag.txt" 2>"$dir/rag.err"
# a closed stdout ends it cleanly (no panic)
QLLM_LIB_DIR="$libdir" cargo run --offline --quiet --bin rag -- "$src/models/tiny-kjv.q8_0.gguf" "$dir/db.sqlite" \
  "How many days of leave?" 2>"$dir/rag-pipe.err" | head -c 5 >/dev/null
! grep -q panicked "$dir/rag-pipe.err" || { cat "$dir/rag-pipe.err"; exit 1; }
grep -q '^indexed: 2 added' "$dir/rag.err" && grep -q '"used":\[{' "$dir/rag.err" && grep -q 'leave.txt' "$dir/rag.err" \
  || { cat "$dir/rag.err"; exit 1; }
[ "$(wc -c <"$dir/rag.txt")" -gt 20 ]
echo "rust examples: ok"

# 3. the README, in a copy of the checkout's rust/ and models/ beside this build (meson's
#    LD_LIBRARY_PATH unset: `cargo run` must find the library by itself)
unset CARGO_TARGET_DIR LD_LIBRARY_PATH
co="$dir/checkout"
mkdir "$co"
(cd "$src" && tar cf - --exclude=Cargo.lock --exclude=target rust) | (cd "$co" && tar xf -)
ln -s "$src/models" "$co/models"
ln -s "$libdir" "$co/build"
python3 - "$src/README.md" "$dir/readme" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
sec = re.search(r"\n### Rust: crates `qllm-sys` and `qllm`\n(.*?)\n## ", text, re.S).group(1)
blocks = re.findall(r"\n\n((?:    [^\n]*\n)+)", sec)
assert len(blocks) == 2, blocks
setup, main = ["".join(l[4:] + "\n" for l in b.splitlines()) for b in blocks]
assert "Then replace `src/main.rs` with" in sec and "\n\nand `cargo run` " in sec, sec
open(sys.argv[2] + ".sh", "w").write(setup)
open(sys.argv[2] + ".rs", "w").write(main)
PY
(cd "$co" && sh -e "$dir/readme.sh" >/dev/null 2>&1 && cp "$dir/readme.rs" hello/src/main.rs \
   && cd hello && cargo run --quiet >"$dir/readme.txt" 2>"$dir/readme.err") || { cat "$dir/readme.err"; exit 1; }
[ "$(wc -c <"$dir/readme.txt")" -gt 40 ] && echo "README's Rust program: $(head -c 100 "$dir/readme.txt")"

# 4. pkg-config finds the library (meson's uninstalled qllm.pc) when there is no build/, and
#    `cargo run` runs the program without help; a second build compiles nothing ...
rm "$co/build"
export PKG_CONFIG_PATH="$libdir/meson-uninstalled"
(cd "$co/hello" && cargo run --quiet >"$dir/pc.txt" 2>"$dir/pc.err") || { cat "$dir/pc.err"; exit 1; }
cmp "$dir/readme.txt" "$dir/pc.txt"
(cd "$co/hello" && cargo build -v >"$dir/again.txt" 2>&1)
if grep -E 'Compiling|Running .*build-script' "$dir/again.txt"; then echo "a second build rebuilt"; exit 1; fi
unset PKG_CONFIG_PATH
# ... a pkg-config qllm of another version is not taken, and the error says so ...
mkdir "$dir/pc-old"
printf 'Name: qllm\nDescription: old\nVersion: 0.5.1\nLibs: -L%s -lqllm\n' "$libdir" >"$dir/pc-old/qllm.pc"
fails() {  # fails MESSAGE [VAR=VALUE...]: a build in hello/ fails, saying MESSAGE
  msg=$1; shift
  if (cd "$co/hello" && env "$@" cargo build --quiet >"$dir/fail.txt" 2>&1); then
    echo "built, expected: $msg"; exit 1
  fi
  grep -qF "$msg" "$dir/fail.txt" || { cat "$dir/fail.txt"; exit 1; }
}
fails 'libqllm not found (pkg-config found qllm 0.5.1; this crate needs 0.x, at least 0.9.0)' \
  PKG_CONFIG_PATH="$dir/pc-old"
# ... a relative QLLM_LIB_DIR is refused, naming it; and with none of the three the build stops
# and says what to do
fails 'QLLM_LIB_DIR must be an absolute path (it is "../build")' QLLM_LIB_DIR=../build
fails 'libqllm not found. Set QLLM_LIB_DIR' 
echo "rust crates: ok"
