# Sourced by the binding runners, with $qllm set: a temporary directory $dir (removed on exit)
# holding the model the bindings are tested on, $dir/m.gguf, and $dir/expected.txt, the greedy
# completion of $prompt by `qllm run` (24 tokens) without the echoed prompt; and $dir/l3.gguf, a
# Llama-3-shaped model with a small byte-level BPE vocabulary (llama3_mini_tokenizer.py).
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$qllm" gen-random --shape tiny --type q4_0 --seed 11 --out "$dir/m.gguf" >/dev/null
python3 "$(dirname "$0")/llama3_mini_tokenizer.py" "$dir/l3-tokenizer.json" 600
"$qllm" gen-random --shape llama3-tiny --vocab "$dir/l3-tokenizer.json" --seed 5 --out "$dir/l3.gguf" >/dev/null
prompt="Once upon a time"
"$qllm" run -m "$dir/m.gguf" -p "$prompt" -n 24 --temp 0 --ignore-eos -q -c 256 >"$dir/run.txt"
python3 - "$dir/run.txt" "$dir/expected.txt" "$prompt" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
assert text.startswith(sys.argv[3]) and text.endswith("\n")
open(sys.argv[2], "w", encoding="utf-8").write(text[len(sys.argv[3]):-1])
PY
