#!/bin/sh
# The Python ctypes binding's tests on a generated model, against libqllm.so of this build.
set -eu
qllm=$(readlink -f "$1"); lib=$(readlink -f "$2"); src="$3"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$qllm" gen-random --shape tiny --type q4_0 --seed 11 --out "$dir/m.gguf" >/dev/null
prompt="Once upon a time"
"$qllm" run -m "$dir/m.gguf" -p "$prompt" -n 24 --temp 0 --ignore-eos -q -c 256 >"$dir/run.txt"
# drop the echoed prompt and the final newline
python3 - "$dir/run.txt" "$dir/expected.txt" "$prompt" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
assert text.startswith(sys.argv[3]) and text.endswith("\n")
open(sys.argv[2], "w", encoding="utf-8").write(text[len(sys.argv[3]):-1])
PY
cd "$src/examples/python"
QLLM_CLI="$qllm" QLLM_LIBRARY="$lib" QLLM_TEST_MODEL="$dir/m.gguf" QLLM_TEST_EXPECTED="$dir/expected.txt" \
  python3 -B -m unittest -v test_qllm 2>&1
