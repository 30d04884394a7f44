#!/bin/sh
# The Rust crate (examples/rust) built offline and tested on a generated model against this
# build's libqllm.so; its greedy text must equal `qllm run`'s.
set -eu
qllm=$(readlink -f "$1"); libdir=$(readlink -f "$2"); src="$3"; target="$4"
. "$(dirname "$0")/prepare.sh"
cd "$src/examples/rust"
export QLLM_LIB_DIR="$libdir" LD_LIBRARY_PATH="$libdir" CARGO_TARGET_DIR="$target"
export QLLM_TEST_MODEL="$dir/m.gguf" QLLM_TEST_EXPECTED="$dir/expected.txt"
cargo test --offline --quiet 2>&1
cargo run --offline --quiet --example complete -- "$dir/m.gguf" "$prompt" 24 >"$dir/ex.txt"
printf '%s\n' "$(cat "$dir/expected.txt")" | cmp - "$dir/ex.txt"
echo "rust binding: ok"
