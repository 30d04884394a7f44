#!/bin/sh
# The Rust crate (examples/rust) built offline and tested on a generated model against this
# build's libqllm.so; its greedy text must equal `qllm run`'s.
set -eu
qllm="$1"; libdir="$2"; src="$3"; target="$4"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$qllm" gen-random --shape tiny --type q4_0 --seed 11 --out "$dir/m.gguf" >/dev/null
prompt="Once upon a time"
"$qllm" run -m "$dir/m.gguf" -p "$prompt" -n 24 --temp 0 --ignore-eos -q -c 256 >"$dir/run.txt"
python3 - "$dir/run.txt" "$dir/expected.txt" "$prompt" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
assert text.startswith(sys.argv[3]) and text.endswith("\n")
open(sys.argv[2], "w", encoding="utf-8").write(text[len(sys.argv[3]):-1])
PY
cd "$src/examples/rust"
export QLLM_LIB_DIR="$libdir" LD_LIBRARY_PATH="$libdir" CARGO_TARGET_DIR="$target"
export QLLM_TEST_MODEL="$dir/m.gguf" QLLM_TEST_EXPECTED="$dir/expected.txt"
cargo test --offline --quiet 2>&1
cargo run --offline --quiet --example complete -- "$dir/m.gguf" "$prompt" 24 >"$dir/ex.txt"
printf '%s\n' "$(cat "$dir/expected.txt")" | cmp - "$dir/ex.txt"
echo "rust binding: ok"
