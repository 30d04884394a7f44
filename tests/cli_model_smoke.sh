#!/bin/sh
# qllm gen-random and qllm bench end to end on a tiny model; bad input gives one line and exit 1.
set -eu
qllm="$1"
run=${QLLM_RUNNER:-}  # e.g. qemu-user in a cross build
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# every command answers --help on stdout with exit 0 and lists at least one flag
for c in info gen-random convert quantize run chat tokenize perplexity embed bench; do
  $run "$qllm" "$c" --help >"$dir/help"
  grep -q "^usage: qllm $c" "$dir/help"
  grep -q -- '-h, --help' "$dir/help" || grep -q -- '--help' "$dir/help"
done
# OMP_NUM_THREADS never takes the default past the bound, and junk in it is not a choice
OMP_NUM_THREADS=3000 $run "$qllm" info | grep -q 'OMP_NUM_THREADS=3000, capped at the maximum'
OMP_NUM_THREADS=abc $run "$qllm" info | grep -q '^threads: .*CPUs of the affinity mask'
# OMP_THREAD_LIMIT caps every parallel region: the default follows it, and qllm bench refuses a
# thread count it would label wrongly (before the model is read)
if [ "$(nproc)" -ge 2 ]; then
  OMP_THREAD_LIMIT=1 $run "$qllm" info | grep -q '^threads: *1 (.*capped by OMP_THREAD_LIMIT=1'
fi
if OMP_THREAD_LIMIT=1 $run "$qllm" bench -m "$dir/missing.gguf" -t 1,2 2>"$dir/err"; then exit 1; fi
grep -q -- '-t: 2 threads, but a parallel region here gets at most 1' "$dir/err"
$run "$qllm" gen-random --shape tiny --type q8_0 --seed 3 --out "$dir/tiny.gguf"
# the bandwidth probe brackets the tests (64 MiB here, its smallest buffer) and every tg row
# carries its fraction of it
out=$($run "$qllm" bench -m "$dir/tiny.gguf" -t 1,2 -p 16 -n 8 -r 2 --membw 0.0625)
echo "$out"
echo "$out" | grep -q '^read bandwidth (best of 10 passes over 0.06 GiB, huge pages): 1 thread [0-9.]* GB/s, 2 threads [0-9.]* GB/s$'
echo "$out" | grep -q '| *2 | pp16 .*|  *|  *|$'
echo "$out" | grep -q '| *1 | tg8  .*| *[0-9.][0-9.]* | *[0-9]\.[0-9][0-9] |$'
echo "$out" | grep -q 'peak RSS'
echo "$out" | grep -q '^read bandwidth after the tests .*2 threads [0-9.]* GB/s$'
out=$($run "$qllm" bench -m "$dir/tiny.gguf" -t 1 -p 0 -n 4 -d 20 -r 1 --no-warmup --kv f32 --membw 0)
echo "$out" | grep -q 'tg4@d20'
if echo "$out" | grep -q -e 'bandwidth' -e 'of bw'; then exit 1; fi
# speculation: plain and speculative runs of a task file, the same text, drafts counted
printf 'a b c d e f a b c d e f a b c' >"$dir/task.txt"
out=$($run "$qllm" bench -m "$dir/tiny.gguf" -t 1 -n 48 -r 1 --spec lookup --prompt-file "$dir/task.txt" --draft-tokens 4)
echo "$out"
echo "$out" | grep -Eq '^\| *1 \| task.txt \| .* \| *[0-9]+ / [1-9][0-9]* *\| *[0-9.]+ \| yes \|$'
out=$($run "$qllm" bench -m "$dir/tiny.gguf" -t 1 -n 12 -r 1 --spec draft --draft "$dir/tiny.gguf" --prompt-file "$dir/task.txt")
echo "$out" | grep -Eq '^\| *1 \| task.txt \| .* \| *([1-9][0-9]*) / \1 *\| *[0-9.]+ \| yes \|$'
for bad in "--prompt-file $dir/task.txt" "--spec lookup" "--spec draft --prompt-file $dir/task.txt" \
           "--spec lookup --draft $dir/tiny.gguf --prompt-file $dir/task.txt" "--spec other"; do
  # shellcheck disable=SC2086
  if $run "$qllm" bench -m "$dir/tiny.gguf" -n 4 $bad 2>"$dir/err"; then echo "accepted: $bad"; exit 1; fi
  [ "$(wc -l <"$dir/err")" -eq 1 ]
done
if $run "$qllm" bench -m "$dir/tiny.gguf" --membw -1 2>"$dir/err"; then exit 1; fi
grep -q -- '--membw' "$dir/err"
if $run "$qllm" bench -m "$dir/missing.gguf" 2>"$dir/err"; then exit 1; fi
[ "$(wc -l <"$dir/err")" -eq 1 ]
if $run "$qllm" bench -m "$dir/tiny.gguf" -t zero 2>"$dir/err"; then exit 1; fi
grep -q -- '-t' "$dir/err"
# more threads than the machine allows (64, or 4 per CPU): refused before the model is read
if [ "$(nproc --all)" -lt 256 ]; then
  if $run "$qllm" bench -m "$dir/missing.gguf" -t 1024 2>"$dir/err"; then exit 1; fi
  grep -q -- 'the most this machine allows' "$dir/err"
fi
head -c 100 "$dir/tiny.gguf" >"$dir/cut.gguf"
if $run "$qllm" bench -m "$dir/cut.gguf" 2>"$dir/err"; then exit 1; fi
grep -q 'gguf' "$dir/err"

# a Code Llama shape: qllm info shows its RoPE base and the sentencepiece vocabulary's chat format
$run "$qllm" gen-random --shape codellama-tiny --out "$dir/code.gguf" >/dev/null
$run "$qllm" info -m "$dir/code.gguf" >"$dir/info"
grep -q '^  rope:      base 1e+06, no scaling$' "$dir/info" && grep -q 'ctx 16384' "$dir/info" &&
  grep -q '^  tokenizer: sentencepiece, 512 pieces; BOS <s>, ends at </s>; chat format llama2$' "$dir/info" ||
  { cat "$dir/info"; exit 1; }

# qllm convert: a sharded Hugging Face directory → GGUF that loads and generates
$run "$qllm" gen-random --format hf --shape tiny --shards 2 --type bf16 --out "$dir/hf" >/dev/null
$run "$qllm" convert "$dir/hf" --dry-run >"$dir/plan"
grep -q 'blk.1.attn_k.weight .*(RoPE rows permuted)' "$dir/plan"
grep -q '^21 tensors' "$dir/plan"
[ ! -e "$dir/conv.gguf" ]
$run "$qllm" convert "$dir/hf" "$dir/conv.gguf" --type q8_0 | grep -q 'wrote .*21 tensors (q8_0).*MB/s), peak RSS'
$run "$qllm" run -m "$dir/conv.gguf" -p "hello" -n 4 --temp 0 -q >/dev/null
# a conversion killed part-way (SIGKILL: no handler runs) leaves no file behind (native only:
# 400 MB of input, about a second of work here)
if [ -z "$run" ]; then
  "$qllm" gen-random --format hf --shape small --layers 300 --out "$dir/hfbig" >/dev/null
  mkdir "$dir/killed"
  "$qllm" convert "$dir/hfbig" "$dir/killed/m.gguf" --type q8_0 -q >/dev/null 2>&1 &
  sleep 0.3
  kill -9 $! 2>/dev/null && echo "convert killed part-way"
  wait $! 2>/dev/null || true
  for f in "$dir/killed"/*; do
    [ -e "$f" ] || continue
    [ "$f" = "$dir/killed/m.gguf" ] || { echo "left behind: $f"; exit 1; }
    "$qllm" run -m "$f" -p hi -n 1 -q >/dev/null  # finished before the kill: complete
  done
  rm -rf "$dir/hfbig" "$dir/killed"
fi
rm "$dir/hf/model-00002-of-00002.safetensors"
if $run "$qllm" convert "$dir/hf" "$dir/conv2.gguf" 2>"$dir/err"; then exit 1; fi
grep -q "model-00002-of-00002.safetensors" "$dir/err"
[ "$(ls "$dir" | grep -c conv2)" = 0 ]  # nothing left behind

# qllm quantize: an F32 GGUF → a Q4_K_M mix that loads, reports its mix and generates; a
# quantized input needs --allow-requantize; gen-random writes the mix directly
$run "$qllm" gen-random --shape small --type f32 --out "$dir/f32.gguf" >/dev/null
$run "$qllm" quantize "$dir/f32.gguf" "$dir/q4km.gguf" --type q4_k_m -t 2 |
  grep -q 'wrote .*q4_k_m, 39 tensors (23 q4_k, 9 f32, 4 q8_0, 3 q6_k), .* in .* s (.* MB/s), peak RSS'
$run "$qllm" info -m "$dir/q4km.gguf" | grep -q '^  tensors:   Q4_K_M: 23 q4_k, 9 f32, 4 q8_0, 3 q6_k$'
$run "$qllm" run -m "$dir/q4km.gguf" -p "hello" -n 4 --temp 0 -q >/dev/null
if $run "$qllm" quantize "$dir/q4km.gguf" "$dir/q6.gguf" --type q6_k 2>"$dir/err"; then exit 1; fi
grep -q "already q4_k.*--allow-requantize" "$dir/err"
[ ! -e "$dir/q6.gguf" ]
$run "$qllm" quantize "$dir/q4km.gguf" "$dir/q6.gguf" --type q6_k --allow-requantize -q >/dev/null
if $run "$qllm" quantize "$dir/f32.gguf" "$dir/x.gguf" --type q3_k_m 2>"$dir/err"; then exit 1; fi
grep -q "q4_k_m" "$dir/err"
$run "$qllm" gen-random --shape small --type q5_k_m --out "$dir/q5km.gguf" >/dev/null
$run "$qllm" info -m "$dir/q5km.gguf" | grep -q '^  tensors:   Q5_K_M: 23 q5_k, 9 f32, 4 q8_0, 3 q6_k$'
rm "$dir/f32.gguf" "$dir/q6.gguf"
# the repacked-weight cache: written once, mapped after, the same text; info says which
QLLM_CACHE_DIR="$dir/cache" $run "$qllm" run -m "$dir/q4km.gguf" -p "hello" -n 6 --temp 0 >"$dir/c1" 2>"$dir/c1.err"
grep -q "^qllm: cache: wrote $dir/cache/q4km.gguf-" "$dir/c1.err"
QLLM_CACHE_DIR="$dir/cache" $run "$qllm" run -m "$dir/q4km.gguf" -p "hello" -n 6 --temp 0 >"$dir/c2" 2>"$dir/c2.err"
grep -q "^qllm: cache: mapped $dir/cache/q4km.gguf-" "$dir/c2.err"
QLLM_CACHE_DIR=none $run "$qllm" run -m "$dir/q4km.gguf" -p "hello" -n 6 --temp 0 >"$dir/c3" 2>"$dir/c3.err"
cmp "$dir/c1" "$dir/c2"
cmp "$dir/c1" "$dir/c3"
! grep -q 'cache' "$dir/c3.err"
QLLM_CACHE_DIR="$dir/cache" $run "$qllm" info -m "$dir/q4km.gguf" | grep -q "^  cache:     mapped $dir/cache/"
[ "$(ls "$dir/cache" | wc -l)" -eq 1 ]

# text commands
m="$dir/tiny.gguf"
out=$($run "$qllm" run -m "$m" -p "Once upon a time" -n 12 --temp 0 2>"$dir/report")
echo "$out" | grep -q '^Once upon a time'
grep -q 'generated: 12 tokens' "$dir/report"
grep -q 'dropped by context policy: 0' "$dir/report"
grep -q 'peak RSS' "$dir/report"
[ "$(echo "Once upon a time" | $run "$qllm" run -m "$m" -n 12 --temp 0 -q)" = "$(printf 'Once upon a time\n' | $run "$qllm" run -m "$m" -f - -n 12 --temp 0 -q)" ]
# same seed, same text; a stop string is not printed
a=$($run "$qllm" run -m "$m" -p "x y z" -n 20 --seed 7 --temp 1 -q)
b=$($run "$qllm" run -m "$m" -p "x y z" -n 20 --seed 7 --temp 1 -t 1 -q)
[ "$a" = "$b" ]
# too-long prompt: error by default, reported drop with a policy
long=$(printf 'word %.0s' $(seq 1 200))
if $run "$qllm" run -m "$m" -p "$long" -c 64 -n 8 2>"$dir/err"; then exit 1; fi
grep -q 'too many' "$dir/err"
[ "$(wc -l <"$dir/err")" -eq 1 ]
$run "$qllm" run -m "$m" -p "$long" -c 64 -n 8 --context-policy keep-head-and-tail --keep 4 >/dev/null 2>"$dir/report"
grep -q 'drops tokens 4-' "$dir/report"
grep -q 'dropped by context policy: [1-9]' "$dir/report"
$run "$qllm" run -m "$m" -p "$long" -c 64 -n 8 --context-policy keep-tail >/dev/null 2>"$dir/report"
grep -q 'drops tokens 0-' "$dir/report"
# chat from a pipe: two turns, a reset, end of input
printf 'Hi there\nAnd then?\n/reset\nHello\n' | $run "$qllm" chat -m "$m" --system "Be brief." -n 6 --temp 0 >"$dir/chat" 2>"$dir/report"
grep -q 'conversation reset' "$dir/chat"
[ "$(grep -c 'generated: 6 tokens' "$dir/report")" -eq 3 ]
grep -q '([1-9][0-9]* reused)' "$dir/report"  # the second turn reuses the first
# Ctrl-C during an answer stops the answer, not the program
mkfifo "$dir/in"
$run "$qllm" chat -m "$m" --ignore-eos -c 64 -q <"$dir/in" >"$dir/chat2" 2>&1 &
pid=$!
exec 3>"$dir/in"
echo "tell me everything" >&3
sleep 2
kill -INT "$pid"
sleep 1
kill -0 "$pid"  # still running
echo "/exit" >&3
exec 3>&-
wait "$pid"
grep -q '\[stopped\]' "$dir/chat2"
# tokenize
[ "$($run "$qllm" tokenize -m "$m" -p "ab" --ids | cut -d' ' -f1)" = "1" ]
$run "$qllm" tokenize -m "$m" -p "ab" | grep -q 'tokens$'
# perplexity: the model's own greedy text scores lower than unrelated text
$run "$qllm" run -m "$m" -p "the of and" -n 400 --temp 0 --ignore-eos -q -c 512 >"$dir/own.txt"
awk 'BEGIN{srand(1); for(i=0;i<3000;i++) printf "%s ", substr("abcdefghijklmnopqrstuvwxyz", int(rand()*26)+1, 1+int(rand()*3))}' >"$dir/other.txt"
own=$($run "$qllm" perplexity -m "$m" -f "$dir/own.txt" -c 128 2>/dev/null | sed -n 's/^PPL = \([0-9.]*\).*/\1/p')
other=$($run "$qllm" perplexity -m "$m" -f "$dir/other.txt" -c 128 --chunks 4 2>/dev/null | sed -n 's/^PPL = \([0-9.]*\).*/\1/p')
echo "perplexity: own text $own, other text $other"
awk -v a="$own" -v b="$other" 'BEGIN{exit !(a > 1 && a * 2 < b)}'
if $run "$qllm" perplexity -m "$m" -f "$dir/missing.txt" 2>"$dir/err"; then exit 1; fi
grep -q 'cannot open' "$dir/err"
if $run "$qllm" run -m "$m" -p x --temp abc 2>"$dir/err"; then exit 1; fi
grep -q -- '--temp' "$dir/err"
if $run "$qllm" run -m "$m" -p "bad $(printf '\377') byte" 2>"$dir/err"; then exit 1; fi
grep -q 'UTF-8' "$dir/err"
# embed: one line of n_embd numbers with unit length
$run "$qllm" embed -m "$m" -p "the cat sat" >"$dir/emb"
awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i * $i; exit !(NF == 64 && s > 0.9999 && s < 1.0001) }' "$dir/emb"
# a model without a vocabulary: text commands say so in one line, bench still works
$run "$qllm" gen-random --shape tiny --no-vocab --out "$dir/novocab.gguf" >/dev/null
for cmd in run tokenize; do
  if $run "$qllm" $cmd -m "$dir/novocab.gguf" -p x 2>"$dir/err"; then exit 1; fi
  [ "$(wc -l <"$dir/err")" -eq 1 ]
  grep -q 'no vocabulary' "$dir/err"
done
$run "$qllm" bench -m "$dir/novocab.gguf" -t 1 -p 8 -n 4 -r 1 --membw 0 | grep -q 'tg4'
echo "cli model smoke: ok"
