#!/bin/sh
# qllm rag end to end on Debian's license texts with the shipped model: index (and again:
# unchanged), search, ask with its budget report and sources, --cot (in rag ask, run and chat);
# the C example's answers equal the tool's; a damaged or missing database is a one-line error.
#   rag_cli.sh QLLM RAG_COT_EXAMPLE SOURCE_ROOT
set -eu
run=${QLLM_RUNNER:-}
qllm="$1"; example="$2"; src="$3"
model="$src/models/tiny-kjv.q8_0.gguf"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/docs"
for f in GPL-3 Apache-2.0 MPL-2.0 BSD; do cp "/usr/share/common-licenses/$f" "$dir/docs/$f.txt"; done
printf 'not \377 UTF-8\n' >"$dir/docs/bad.txt"

$run "$qllm" rag index "$dir/docs" --db "$dir/r.db" -m "$model" >"$dir/idx1.txt" 2>"$dir/idx1.err"
grep -q '^indexed: 4 added, 0 changed, 0 unchanged, 0 removed, 1 skipped' "$dir/idx1.txt"
grep -q 'skipped .*bad.txt: not UTF-8 text' "$dir/idx1.err"
$run "$qllm" rag index "$dir/docs" --db "$dir/r.db" -m "$model" >"$dir/idx2.txt"
grep -q '^indexed: 0 added, 0 changed, 4 unchanged, 0 removed, 1 skipped; chunks: +0 -0' "$dir/idx2.txt"

$run "$qllm" rag search --db "$dir/r.db" -k 2 "royalty-free patent license" >"$dir/search.txt"
grep -q '^1\. chunk [0-9]* (' "$dir/search.txt"

q="What does each contributor grant under the patent license?"
$run "$qllm" rag ask --db "$dir/r.db" -m "$model" --temp 0 -n 48 -k 4 "$q" >"$dir/ask.txt" 2>"$dir/ask.err"
grep -q '^qllm rag: 4 chunks retrieved, [1-4] given to the model, [0-3] dropped' "$dir/ask.err"
grep -q '^  used    \[1\] rank 1, chunk [0-9]* (' "$dir/ask.err"
grep -q 'reserved for the answer <= window 512' "$dir/ask.err"
grep -q '^sources:' "$dir/ask.txt"
grep -q '^  \[1\] chunk [0-9]*: .*docs/.*\.txt#[0-9]*$' "$dir/ask.txt"
# speculation by prompt lookup is rag ask's default: --spec off gives the same answer without it
grep -q ' | lookup: [0-9]* of [0-9]* drafts accepted in [0-9]* passes' "$dir/ask.err"
$run "$qllm" rag ask --db "$dir/r.db" -m "$model" --temp 0 -n 48 -k 4 --spec off "$q" >"$dir/ask-off.txt" 2>"$dir/ask-off.err"
cmp "$dir/ask.txt" "$dir/ask-off.txt"
if grep -q 'drafts accepted' "$dir/ask-off.err"; then exit 1; fi
$run "$qllm" rag ask --db "$dir/r.db" -m "$model" --temp 0 -n 48 -k 4 --cot --cot-answer-tokens 24 -q "$q" \
  >"$dir/cot.txt" 2>"$dir/cot.err"
grep -q '^\[reasoning\]' "$dir/cot.err"
grep -q '^\[end of reasoning\]' "$dir/cot.err"

# -k is the number of chunks; --top-k stays the sampler's
$run "$qllm" rag ask --db "$dir/r.db" -m "$model" --temp 0 -n 8 -k 3 --top-k 1 -q "$q" >/dev/null 2>"$dir/k.err"
grep -q '^qllm rag: 3 chunks retrieved' "$dir/k.err"
# arguments are checked before the database is created
if $run "$qllm" rag index "$dir/no-such-file.txt" --db "$dir/new.db" -m "$model" 2>/dev/null; then exit 1; fi
[ ! -e "$dir/new.db" ]
if $run "$qllm" rag index "$dir/docs" --db "$dir/new.db" -m "$model" --chunk-tokens 64 --overlap 40 2>/dev/null; then exit 1; fi
[ ! -e "$dir/new.db" ]
$run "$qllm" rag index "$dir/docs" --db "$dir/small.db" -m "$model" --chunk-tokens 64 -q >/dev/null 2>&1

# the C example: the same two answers as the tool (the tool drops the template's leading space)
$run "$example" "$model" "$dir/r.db" "$q" >"$dir/c.txt" 2>"$dir/c.err"
grep -q '^report: {"dropped":' "$dir/c.err"
python3 - "$dir/c.txt" "$dir/ask.txt" "$dir/cot.txt" <<'PY'
import sys
c = open(sys.argv[1], encoding="utf-8").read().split("\n")
plain = open(sys.argv[2], encoding="utf-8").read().split("\nsources:")[0]
cot = open(sys.argv[3], encoding="utf-8").read().split("\nsources:")[0]
assert c[0].startswith("answer: ") and c[1].startswith("answer after reasoning: "), c
assert c[0][len("answer: "):].lstrip(" ") == plain, (c[0], plain)
assert c[1][len("answer after reasoning: "):].lstrip(" ") == cot, (c[1], cot)
PY

# chain of thought in run: the answer on stdout, the reasoning on stderr
$run "$qllm" run -m "$model" --temp 0 -n 24 --cot --cot-answer-tokens 8 -q -p "And Moses said," >"$dir/run.txt" 2>"$dir/run.err"
grep -q '^\[reasoning\]' "$dir/run.err"
[ "$(wc -l <"$dir/run.txt")" -eq 1 ]

# and in chat: the answer on stdout, the reasoning on stderr
printf 'Who led the people out of Egypt?\n' |
  $run "$qllm" chat -m "$model" --temp 0 -n 16 --cot --cot-answer-tokens 8 -q >"$dir/chat.txt" 2>"$dir/chat.err"
grep -q '^\[reasoning\]' "$dir/chat.err"
grep -q '^\[end of reasoning\]' "$dir/chat.err"
[ "$(wc -l <"$dir/chat.txt")" -eq 1 ]

# bad databases: one line, exit 1
if $run "$qllm" rag ask --db "$dir/none.db" -m "$model" "$q" 2>"$dir/e1"; then exit 1; fi
grep -q 'does not exist' "$dir/e1"
head -c 8192 "$dir/r.db" >"$dir/damaged.db"
head -c 20000 /dev/urandom >>"$dir/damaged.db"
if $run "$qllm" rag search --db "$dir/damaged.db" patent 2>"$dir/e2"; then exit 1; fi
grep -Eq 'malformed|not a database' "$dir/e2"
cp "$model" "$dir/model-as-db.db"
if $run "$qllm" rag ask --db "$dir/model-as-db.db" -m "$model" "$q" 2>"$dir/e3"; then exit 1; fi
grep -q 'not a database' "$dir/e3"
echo "rag end to end: ok"
