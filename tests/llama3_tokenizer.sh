#!/bin/sh
# Llama-3's tokenizer (byte-level BPE, Llama-3's pre-tokenizer) against two independent encoders:
# the npm package llama3-tokenizer-js (pinned in tests/serve/package.json, installed by
# scripts/install-deps.sh) and tests/tokenizer/llama3_reference.py (the pre-tokenizer's regex run
# by Python's re, the classic BPE loop). The package's vocabulary and merges become a Hugging Face
# tokenizer.json, `qllm gen-random --shape llama3-tiny --vocab` writes a GGUF with them, and
# llama3_check compares qllm's encodings of tests/tokenizer/llama3_corpus.py's strings with both
# references (and round-trips decode, streaming decode, invalid UTF-8, encode speed).
# Skipped (77) without node or the package.
#   llama3_tokenizer.sh QLLM LLAMA3_CHECK SOURCE_ROOT
set -eu
qllm=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); src="$3"
check=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
command -v node >/dev/null 2>&1 || { echo "node is not installed: skipped"; exit 77; }
[ -f "$src/tests/serve/node_modules/llama3-tokenizer-js/package.json" ] ||
  { echo "llama3-tokenizer-js is not installed (scripts/install-deps.sh --tests): skipped"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
t="$src/tests/tokenizer"
node "$t/llama3_reference.mjs" tokenizer-json "$dir/tokenizer.json"
python3 "$t/llama3_corpus.py" >"$dir/corpus.json"
node "$t/llama3_reference.mjs" encode "$dir/corpus.json" "$dir/llama3-tokenizer-js.json"
python3 "$t/llama3_reference.py" "$dir/tokenizer.json" "$dir/corpus.json" "$dir/python-re-bpe.json"
"$qllm" gen-random --shape llama3-tiny --vocab "$dir/tokenizer.json" --out "$dir/llama3.gguf"
cd "$dir"
"$check" llama3.gguf corpus.json llama3-tokenizer-js.json python-re-bpe.json \
  --bench "$src/models/tiny-kjv.q8_0.gguf"
# qllm info names the vocabulary, its end pieces, the chat format and the RoPE factors
"$qllm" info -m llama3.gguf >info.txt
grep -q '^  tokenizer: llama3 byte-level BPE, 128256 pieces; BOS <|begin_of_text|>, ends at .*<|eot_id|>.*; chat format llama3$' info.txt &&
  grep -q '^  rope:      base 500000, llama3 frequency factors' info.txt || { cat info.txt; echo "FAIL: qllm info"; exit 1; }
# the file runs: a completion, and a chat in Llama-3's format (BOS, three headers, two <|eot_id|>)
"$qllm" run -m llama3.gguf -p "Hello, world" -n 4 --temp 0 -q >run.txt
grep -q '^Hello, world' run.txt || { cat run.txt; echo "FAIL: qllm run on the Llama-3 file"; exit 1; }
printf 'Hello there\n' | "$qllm" chat -m llama3.gguf --system "Be brief" -n 4 --temp 0 >chat.txt 2>chat.err ||
  { cat chat.err; echo "FAIL: qllm chat on the Llama-3 file"; exit 1; }
grep -q 'prompt: 19 tokens' chat.err || { cat chat.err; echo "FAIL: the Llama-3 chat prompt is not 19 tokens"; exit 1; }
# qllm serve formats chats the same way: 19 prompt tokens for the same dialog
if command -v curl >/dev/null 2>&1; then
  "$qllm" serve -m llama3.gguf --port 0 2>serve.err &
  spid=$!
  i=0; port=
  while [ $i -lt 300 ] && [ -z "$port" ]; do
    port=$(sed -n 's|^qllm serve: listening on http://127\.0\.0\.1:\([0-9][0-9]*\) .*|\1|p' serve.err)
    sleep 0.1; i=$((i + 1))
  done
  [ -n "$port" ] || { kill "$spid"; cat serve.err; echo "FAIL: qllm serve did not start"; exit 1; }
  curl -s -H 'Content-Type: application/json' -d '{"messages":[{"role":"system","content":"Be brief"},{"role":"user","content":"Hello there"}],"max_tokens":4,"temperature":0}' \
    "http://127.0.0.1:$port/v1/chat/completions" >serve.json || true
  kill -TERM "$spid"; wait "$spid" || true
  python3 -c 'import json,sys; u=json.load(open("serve.json"))["usage"]; sys.exit(0 if u["prompt_tokens"] == 19 else "serve: %r" % u)' ||
    { cat serve.json; echo "FAIL: qllm serve's Llama-3 chat prompt"; exit 1; }
fi
# the same vocabulary through a Hugging Face directory: gen-random --format hf writes tokenizer.json,
# tokenizer_config.json and rope_scaling llama3; qllm convert makes a GGUF whose encodings and
# chat prompt are the same
"$qllm" gen-random --format hf --shape llama3-tiny --vocab "$dir/tokenizer.json" --type f32 --out hf >/dev/null
"$qllm" convert hf conv.gguf --type q8_0 -q >/dev/null
"$check" conv.gguf corpus.json llama3-tokenizer-js.json python-re-bpe.json >conv-check.txt ||
  { cat conv-check.txt; echo "FAIL: the converted Llama-3 file's encodings"; exit 1; }
printf 'Hello there\n' | "$qllm" chat -m conv.gguf --system "Be brief" -n 4 --temp 0 >chat2.txt 2>chat2.err ||
  { cat chat2.err; echo "FAIL: qllm chat on the converted Llama-3 file"; exit 1; }
grep -q 'prompt: 19 tokens' chat2.err || { cat chat2.err; echo "FAIL: the converted file's chat prompt"; exit 1; }
echo "llama3 tokenizer: ok"
