#!/bin/sh
# The C programs over the C ABI on a generated model: the frozen-header caller, and the C example
# whose greedy completion must equal `qllm run`'s.
set -eu
run=${QLLM_RUNNER:-}  # e.g. qemu-user in a cross build
qllm="$1"; frozen="$2"; complete="$3"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
$run "$qllm" gen-random --shape tiny --type q4_0 --seed 11 --out "$dir/m.gguf" >/dev/null
$run "$frozen" "$dir/m.gguf"
prompt="Once upon a time"
$run "$complete" "$dir/m.gguf" "$prompt" 24 >"$dir/c.txt" 2>"$dir/c.err"
grep -q 'generated 24 tokens (24 streamed)' "$dir/c.err"
$run "$qllm" run -m "$dir/m.gguf" -p "$prompt" -n 24 --temp 0 -q >"$dir/cpp.txt"
# qllm run echoes the prompt first
printf '%s' "$prompt" >"$dir/want.txt"
cat "$dir/c.txt" >>"$dir/want.txt"
cmp "$dir/want.txt" "$dir/cpp.txt"
if $run "$complete" "$dir/missing.gguf" x 2>"$dir/err"; then exit 1; fi
grep -q 'QLLM_ERR_IO' "$dir/err"
echo "C programs: ok"
