#!/bin/sh
# qllm gen-random and qllm bench end to end on a tiny model; bad input gives one line and exit 1.
set -eu
qllm="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$qllm" gen-random --shape tiny --type q8_0 --seed 3 --out "$dir/tiny.gguf"
out=$("$qllm" bench -m "$dir/tiny.gguf" -t 1,2 -p 16 -n 8 -r 2)
echo "$out"
echo "$out" | grep -q '| *2 | pp16 '
echo "$out" | grep -q '| *1 | tg8 '
echo "$out" | grep -q 'peak RSS'
"$qllm" bench -m "$dir/tiny.gguf" -t 1 -p 0 -n 4 -d 20 -r 1 --no-warmup --kv f32 | grep -q 'tg4@d20'
if "$qllm" bench -m "$dir/missing.gguf" 2>"$dir/err"; then exit 1; fi
[ "$(wc -l <"$dir/err")" -eq 1 ]
if "$qllm" bench -m "$dir/tiny.gguf" -t zero 2>"$dir/err"; then exit 1; fi
grep -q -- '-t' "$dir/err"
head -c 100 "$dir/tiny.gguf" >"$dir/cut.gguf"
if "$qllm" bench -m "$dir/cut.gguf" 2>"$dir/err"; then exit 1; fi
grep -q 'gguf' "$dir/err"
echo "cli model smoke: ok"
