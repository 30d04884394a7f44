#!/bin/sh
# qllm serve with the shipped model and an API key: the official openai npm client
# (tests/serve/openai_client.mjs: models, greedy completions, a streamed chat, embeddings, a wrong
# key, a prompt too long), then curl: /health, a missing key, malformed and wrong-typed bodies,
# n > 1, a streamed completion's [DONE], /metrics; SIGTERM lets a running stream end and exits 0.
# Skipped (77) without node, curl, or tests/serve/node_modules (npm ci --prefix tests/serve).
#   serve_openai.sh QLLM SOURCE_ROOT
set -eu
run=${QLLM_RUNNER:-}
qllm="$1"; src="$2"
model="$src/models/tiny-kjv.q8_0.gguf"
name=tiny-kjv.q8_0
command -v node >/dev/null 2>&1 || { echo "node is not installed: skipped"; exit 77; }
if [ ! -d "$src/tests/serve/node_modules/openai" ]; then
  why="no tests/serve/node_modules/openai (npm ci --prefix tests/serve)"
  [ -f "$src/.cache/npm-unavailable" ] && why="$why: $(tr '\n' ' ' <"$src/.cache/npm-unavailable")"
  echo "$why: skipped"
  exit 77
fi
command -v curl >/dev/null 2>&1 || { echo "curl is not installed: skipped"; exit 77; }

dir=$(mktemp -d)
pid=
cleanup() {
  rc=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$dir/server.err" ]; then
    echo "--- server stderr (last 40 lines)"
    tail -n 40 "$dir/server.err"
  fi
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
fail() { echo "FAIL: $*"; exit 1; }

key="sk-qllm-test-$$"
printf '%s\n' "$key" >"$dir/api-key"
chmod 600 "$dir/api-key"

$run "$qllm" serve -m "$model" --port 0 --parallel 2 --api-key-file "$dir/api-key" 2>"$dir/server.err" &
pid=$!
# the one line that says it accepts connections
line=
i=0
while [ $i -lt 600 ]; do
  line=$(grep '^qllm serve: listening on http://' "$dir/server.err" || true)
  [ -n "$line" ] && break
  kill -0 "$pid" 2>/dev/null || { rc=0; wait "$pid" || rc=$?; fail "the server exited before listening (exit status $rc)"; }
  sleep 0.1
  i=$((i + 1))
done
[ -n "$line" ] || fail "no 'listening on' line within 60 s"
echo "$line"
port=$(printf '%s\n' "$line" | sed -n 's|^qllm serve: listening on http://127\.0\.0\.1:\([0-9][0-9]*\) (model \(.*\), \([0-9][0-9]*\) slots)$|\1|p')
[ -n "$port" ] || fail "cannot parse the listening line"
printf '%s\n' "$line" | grep -q "(model $name, 2 slots)\$" || fail "expected model $name and 2 slots"
base="http://127.0.0.1:$port"

# the official client
node "$src/tests/serve/openai_client.mjs" "$base" "$key" "$name"

# status [CURL ARGS...]: prints the HTTP status, the body goes to $dir/body
status() { curl -s -o "$dir/body" -w '%{http_code}' "$@"; }
auth="Authorization: Bearer $key"
json="Content-Type: application/json"
# expect CODE WHAT [CURL ARGS...]
expect() {
  code=$1; what=$2; shift 2
  got=$(status "$@") || fail "$what: curl failed"
  [ "$got" = "$code" ] || { cat "$dir/body"; echo; fail "$what: HTTP $got, expected $code"; }
}
# the body is an OpenAI-style error object
expect_error_body() {
  python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; assert isinstance(e["message"], str) and e["message"] and isinstance(e["type"], str), e' \
    "$dir/body" || { cat "$dir/body"; echo; fail "$1: not an OpenAI-style error object"; }
}

expect 200 "/health" "$base/health"
grep -q '"status" *: *"ok"' "$dir/body" || fail "/health: $(cat "$dir/body")"
# /health and /metrics need no key; /v1/* does
expect 200 "/metrics without a key" "$base/metrics"
expect 401 "completion without a key" -H "$json" -d '{"prompt":"In the beginning","max_tokens":4}' "$base/v1/completions"
expect_error_body "401"
expect 401 "models without a key" "$base/v1/models"
expect 401 "completion with a wrong key" -H "Authorization: Bearer wrong" -H "$json" \
  -d '{"prompt":"In the beginning","max_tokens":4}' "$base/v1/completions"
expect 200 "models with the key" -H "$auth" "$base/v1/models"
grep -q "\"$name\"" "$dir/body" || fail "/v1/models does not name $name: $(cat "$dir/body")"

# malformed requests: 400 with an error object
expect 400 "malformed JSON" -H "$auth" -H "$json" -d '{"prompt":' "$base/v1/completions"
expect_error_body "malformed JSON"
grep -q '"invalid_request_error"' "$dir/body" || fail "malformed JSON: type is not invalid_request_error"
expect 400 "prompt of the wrong type" -H "$auth" -H "$json" -d '{"prompt": 5}' "$base/v1/completions"
expect_error_body "prompt of the wrong type"
expect 400 "n = 2" -H "$auth" -H "$json" -d '{"prompt":"In the beginning","max_tokens":4,"n":2}' "$base/v1/completions"
expect_error_body "n = 2"
expect 400 "chat without messages" -H "$auth" -H "$json" -d '{"max_tokens":4}' "$base/v1/chat/completions"
expect_error_body "chat without messages"
expect 400 "embeddings of a number" -H "$auth" -H "$json" -d '{"input": 5}' "$base/v1/embeddings"
expect_error_body "embeddings of a number"

# a streamed completion: server-sent events ending with [DONE]
curl -s -N -o "$dir/stream" -w '%{http_code}' -H "$auth" -H "$json" \
  -d '{"prompt":"And God said","max_tokens":16,"temperature":0,"stream":true}' "$base/v1/completions" >"$dir/code"
[ "$(cat "$dir/code")" = 200 ] || { cat "$dir/stream"; fail "streamed completion: HTTP $(cat "$dir/code")"; }
grep -q '^data: {' "$dir/stream" || fail "streamed completion: no data events"
[ "$(grep -v '^$' "$dir/stream" | tail -n 1)" = "data: [DONE]" ] || { cat "$dir/stream"; fail "streamed completion does not end with data: [DONE]"; }
grep -q '"finish_reason" *: *"\(stop\|length\)"' "$dir/stream" || fail "streamed completion: no finish_reason"
# the streamed text is the non-streamed text
expect 200 "the same completion not streamed" -H "$auth" -H "$json" \
  -d '{"prompt":"And God said","max_tokens":16,"temperature":0}' "$base/v1/completions"
python3 - "$dir/stream" "$dir/body" <<'PY' || fail "streamed and non-streamed completions differ"
import json, sys
events = [l[len("data: "):] for l in open(sys.argv[1], encoding="utf-8").read().split("\n") if l.startswith("data: ")]
assert events[-1] == "[DONE]", events[-1]
streamed = "".join(json.loads(e)["choices"][0].get("text") or "" for e in events[:-1] if json.loads(e).get("choices"))
whole = json.load(open(sys.argv[2], encoding="utf-8"))
assert streamed == whole["choices"][0]["text"], (streamed, whole["choices"][0]["text"])
u = whole["usage"]
assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
PY

# speculation by prompt lookup per request: the same greedy text as without, streamed or not, the
# drafts counted in usage.completion_tokens_details (OpenAI's fields for predicted tokens)
quote='In the beginning God created the heaven and the earth. And the earth was without form, and void. In the beginning God created the heaven and the earth. And the earth was'
for spec in off lookup; do
  expect 200 "completion, speculation $spec" -H "$auth" -H "$json" \
    -d "{\"prompt\":\"$quote\",\"max_tokens\":40,\"temperature\":0,\"speculation\":\"$spec\",\"draft_tokens\":6}" \
    "$base/v1/completions"
  cp "$dir/body" "$dir/spec-$spec.json"
done
curl -s -N -o "$dir/spec-stream" -H "$auth" -H "$json" \
  -d "{\"prompt\":\"$quote\",\"max_tokens\":40,\"temperature\":0,\"speculation\":\"lookup\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}" \
  "$base/v1/completions"
python3 - "$dir/spec-off.json" "$dir/spec-lookup.json" "$dir/spec-stream" <<'PY' || fail "speculation changed the text or was not reported"
import json, sys
off, on = (json.load(open(p, encoding="utf-8")) for p in sys.argv[1:3])
assert on["choices"][0]["text"] == off["choices"][0]["text"], (on, off)
assert "completion_tokens_details" not in off["usage"], off["usage"]
d = on["usage"]["completion_tokens_details"]
assert d["accepted_prediction_tokens"] + d["rejected_prediction_tokens"] > 0, d
events = [json.loads(l[6:]) for l in open(sys.argv[3], encoding="utf-8").read().split("\n")
          if l.startswith("data: {")]
assert "".join(e["choices"][0].get("text") or "" for e in events if e.get("choices")) == off["choices"][0]["text"]
assert "completion_tokens_details" in events[-1]["usage"], events[-1]
print("speculation:", d)
PY
# structured output on /v1/completions: json_object, and qllm's "grammar" (GBNF); both at once is a 400
expect 200 "completion, response_format json_object" -H "$auth" -H "$json" \
  -d '{"prompt":"And God said","max_tokens":300,"temperature":0.7,"seed":2,"response_format":{"type":"json_object"}}' \
  "$base/v1/completions"
python3 - "$dir/body" <<'PY' || fail "json_object: $(cat "$dir/body")"
import json, sys
r = json.load(open(sys.argv[1], encoding="utf-8"))
c = r["choices"][0]
assert c["finish_reason"] == "length" or isinstance(json.loads(c["text"]), dict), c
PY
expect 200 "completion, grammar" -H "$auth" -H "$json" \
  -d '{"prompt":"And God said","max_tokens":20,"temperature":1,"grammar":"root ::= \" \" (\"yes\" | \"no\")"}' \
  "$base/v1/completions"
python3 - "$dir/body" <<'PY' || fail "grammar: $(cat "$dir/body")"
import json, sys
c = json.load(open(sys.argv[1], encoding="utf-8"))["choices"][0]
assert c["text"] in (" yes", " no") and c["finish_reason"] == "stop", c
PY
# constrained requests decoded in one batch give the text each gives alone (sampled, seeded), on
# both endpoints, streamed or not
python3 - "$base" "$key" <<'PY' || fail "constrained requests batched != alone"
import json, sys, threading, urllib.request
base, key = sys.argv[1], sys.argv[2]
schema = {"type": "object", "properties": {"who": {"type": "string", "maxLength": 10},
          "n": {"type": "number", "minimum": 0, "maximum": 99.5}}, "required": ["who", "n"], "additionalProperties": False}
fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
reqs = [("/v1/completions", {"prompt": "And God said", "max_tokens": 150, "temperature": 1, "seed": 3, "response_format": fmt}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Who?"}], "max_tokens": 150, "temperature": 1,
                                  "seed": 4, "response_format": fmt, "stream": True})]
def text(path, body):
    r = urllib.request.Request(base + path, json.dumps(body).encode(), {"Authorization": "Bearer " + key,
                               "Content-Type": "application/json"})
    raw = urllib.request.urlopen(r, timeout=120).read().decode()
    if not body.get("stream"):
        c = json.loads(raw)["choices"][0]
        return c.get("text") if "text" in c else c["message"]["content"]
    out = ""
    for line in raw.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:]).get("choices", []):
                out += c.get("text") or (c.get("delta") or {}).get("content") or ""
    return out
alone = [text(p, b) for p, b in reqs]
together = [None] * len(reqs)
ts = [threading.Thread(target=lambda i=i: together.__setitem__(i, text(*reqs[i]))) for i in range(len(reqs))]
[t.start() for t in ts]
[t.join() for t in ts]
assert together == alone, (alone, together)
for t in alone:
    v = json.loads(t)
    assert list(v) == ["who", "n"], v  # the schema's order
    assert isinstance(v["who"], str) and len(v["who"]) <= 10 and 0 <= v["n"] <= 99.5, v
print("constrained, batched = alone:", alone)
PY
expect 400 "grammar with an undefined rule" -H "$auth" -H "$json" \
  -d '{"prompt":"a","grammar":"root ::= x"}' "$base/v1/completions"
grep -q "rule 'x' is used but never defined" "$dir/body" || fail "grammar error: $(cat "$dir/body")"
expect 400 "grammar and response_format" -H "$auth" -H "$json" \
  -d '{"prompt":"a","grammar":"root ::= \"a\"","response_format":{"type":"json_object"}}' "$base/v1/completions"
expect 400 "speculation by a draft model" -H "$auth" -H "$json" \
  -d '{"prompt":"In the beginning","max_tokens":4,"speculation":"draft"}' "$base/v1/completions"
grep -q 'no draft model' "$dir/body" || fail "speculation draft: $(cat "$dir/body")"
expect 400 "lookup with draft_tokens 0" -H "$auth" -H "$json" \
  -d '{"prompt":"In the beginning","max_tokens":4,"speculation":"lookup","draft_tokens":0}' "$base/v1/completions"
expect_error_body "lookup with draft_tokens 0"
# draft_tokens alone asks for lookup
expect 200 "draft_tokens alone" -H "$auth" -H "$json" \
  -d "{\"prompt\":\"$quote\",\"max_tokens\":40,\"temperature\":0,\"draft_tokens\":6}" "$base/v1/completions"
grep -q 'accepted_prediction_tokens' "$dir/body" || fail "draft_tokens alone: no speculation: $(cat "$dir/body")"

# /metrics: the request counter; once every response is complete, no slot is busy
expect 200 "/metrics" "$base/metrics"
grep -q '^qllm_requests_total{status="200"} [1-9]' "$dir/body" || { cat "$dir/body"; fail "/metrics: no qllm_requests_total{status=\"200\"}"; }
grep -q '^qllm_requests_total{status="401"} [1-9]' "$dir/body" || fail "/metrics: no qllm_requests_total{status=\"401\"}"
grep -q '^qllm_requests_total{status="400"} [1-9]' "$dir/body" || fail "/metrics: no qllm_requests_total{status=\"400\"}"
i=0
until grep -q '^qllm_active_slots 0$' "$dir/body"; do
  [ $i -lt 50 ] || { grep '^qllm_active_slots' "$dir/body" || true; fail "/metrics: qllm_active_slots is not 0 after all requests"; }
  sleep 0.1
  i=$((i + 1))
  expect 200 "/metrics" "$base/metrics"
done

# SIGTERM while a stream runs: the stream still ends with [DONE], the server exits 0 within 30 s
curl -s -N -o "$dir/last" -H "$auth" -H "$json" \
  -d '{"prompt":"In the beginning","max_tokens":400,"temperature":0,"stream":true}' "$base/v1/completions" &
cpid=$!
i=0
while [ $i -lt 100 ] && ! grep -q '^data: ' "$dir/last" 2>/dev/null; do sleep 0.05; i=$((i + 1)); done
kill -TERM "$pid"
# a watchdog: SIGKILL after 30 s (killed itself, it takes its sleep along)
( sleep 30 & s=$!; trap 'kill "$s"; exit 0' TERM; wait "$s"; kill -KILL "$pid" 2>/dev/null ) >/dev/null 2>&1 &
watchdog=$!
rc=0
wait "$pid" || rc=$?
pid=
kill "$watchdog" 2>/dev/null || true
[ "$rc" -eq 0 ] || fail "the server exited with status $rc after SIGTERM (137: still running after 30 s)"
crc=0
wait "$cpid" || crc=$?
events=$(grep -c '^data: ' "$dir/last" || true)
[ "$crc" -eq 0 ] || fail "the stream running at SIGTERM was cut (curl exit $crc after $events events)"
[ "$(grep -v '^$' "$dir/last" | tail -n 1)" = "data: [DONE]" ] || fail "the stream running at SIGTERM did not end with data: [DONE]"
echo "serve openai: ok"
