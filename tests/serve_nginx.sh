#!/bin/sh
# Two qllm serve replicas behind nginx (run unprivileged, in the foreground, from a config in a
# temporary directory): concurrent greedy completions through nginx all succeed with the same
# text and both replicas serve some; a stream passes through unbuffered to data: [DONE]; after
# SIGTERM to one replica (it exits 0) every request still succeeds on the other.
# Skipped (77) without nginx or curl.
#   serve_nginx.sh QLLM SOURCE_ROOT
set -eu
run=${QLLM_RUNNER:-}
qllm="$1"; src="$2"
model="$src/models/tiny-kjv.q8_0.gguf"
# Debian's nginx as scripts/install-deps.sh unpacks it, else an installed one
nginx=
[ -x "$src/.cache/nginx/usr/sbin/nginx" ] && nginx="$src/.cache/nginx/usr/sbin/nginx"
[ -n "$nginx" ] || nginx=$(command -v nginx 2>/dev/null || true)
[ -n "$nginx" ] || { [ -x /usr/sbin/nginx ] && nginx=/usr/sbin/nginx; } || true
[ -n "$nginx" ] || { echo "nginx is not installed: skipped"; exit 77; }
command -v curl >/dev/null 2>&1 || { echo "curl is not installed: skipped"; exit 77; }

dir=$(mktemp -d)
# nginx started as root runs its workers as nobody: they must reach their temporary directories
chmod 755 "$dir"
pid1=; pid2=; ngpid=
stop() {  # stop PID: SIGKILL and reap, if still there
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
cleanup() {
  rc=$?
  if [ -n "$ngpid" ] && kill -0 "$ngpid" 2>/dev/null; then
    kill -QUIT "$ngpid" 2>/dev/null || true
    i=0
    while [ $i -lt 50 ] && kill -0 "$ngpid" 2>/dev/null && [ -e "$dir/nginx.pid" ]; do sleep 0.1; i=$((i + 1)); done
  fi
  stop "$ngpid"; stop "$pid1"; stop "$pid2"
  if [ "$rc" -ne 0 ]; then
    for f in r1.err r2.err error.log; do
      [ -s "$dir/$f" ] && { echo "--- $f (last 20 lines)"; tail -n 20 "$dir/$f"; }
    done
  fi
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
fail() { echo "FAIL: $*"; exit 1; }

# start_replica N: starts replica N in the background; its pid in pidN
start_replica() {
  $run "$qllm" serve -m "$model" --port 0 --parallel 2 2>"$dir/r$1.err" &
  eval "pid$1=\$!"
}
# port_of N: waits (up to 60 s) for replica N's listening line and prints its port
port_of() {
  i=0
  while [ $i -lt 600 ]; do
    p=$(sed -n 's|^qllm serve: listening on http://127\.0\.0\.1:\([0-9][0-9]*\) (model .*, [0-9][0-9]* slots)$|\1|p' "$dir/r$1.err")
    [ -n "$p" ] && { echo "$p"; return 0; }
    eval "kill -0 \"\$pid$1\"" 2>/dev/null || { echo "replica $1 exited before listening" >&2; return 1; }
    sleep 0.1
    i=$((i + 1))
  done
  echo "replica $1: no 'listening on' line within 60 s" >&2
  return 1
}
start_replica 1
start_replica 2
# (how a replica that did not start ended goes into the message; its stderr follows on exit)
if ! port1=$(port_of 1); then rc=0; wait "$pid1" || rc=$?; fail "replica 1 did not start (exit status $rc)"; fi
if ! port2=$(port_of 2); then rc=0; wait "$pid2" || rc=$?; fail "replica 2 did not start (exit status $rc)"; fi
echo "replicas on ports $port1 and $port2"

# a free port for nginx
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir "$dir/tmp"
cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 256; }
http {
  log_format upstream '\$status \$upstream_addr \$upstream_status';
  access_log $dir/access.log upstream;
  client_body_temp_path $dir/tmp/client_body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  upstream qllm {
    server 127.0.0.1:$port1 max_fails=1 fail_timeout=5s;
    server 127.0.0.1:$port2 max_fails=1 fail_timeout=5s;
    keepalive 8;
  }
  server {
    listen 127.0.0.1:$port;
    # the readiness probes below are not counted: nginx writes a request's log line after the
    # client has its answer, so a probe's line could land after the log is emptied
    location = /health {
      access_log off;
      proxy_pass http://qllm;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    location / {
      proxy_pass http://qllm;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
}
EOF
"$nginx" -t -q -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" || fail "nginx rejects the configuration"
"$nginx" -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" &
ngpid=$!
base="http://127.0.0.1:$port"
i=0
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health" || true)" = 200 ]; do
  kill -0 "$ngpid" 2>/dev/null || fail "nginx exited"
  [ $i -lt 300 ] || fail "nginx does not answer /health within 30 s"
  sleep 0.1
  i=$((i + 1))
done
: >"$dir/access.log"  # count only the completions below

body='{"prompt":"In the beginning","max_tokens":16,"temperature":0}'
# batch NAME: 10 concurrent greedy completions through nginx; all must be 200 with the same text
batch() {
  k=1; pids=
  while [ $k -le 10 ]; do
    curl -s -o "$dir/$1.$k.json" -w '%{http_code}' -H 'Content-Type: application/json' -d "$body" \
      "$base/v1/completions" >"$dir/$1.$k.code" &
    pids="$pids $!"
    k=$((k + 1))
  done
  for p in $pids; do wait "$p" || fail "$1: curl failed"; done
  python3 - "$dir" "$1" <<'PY' || fail "$1: not every request succeeded with the same text"
import json, sys
d, name = sys.argv[1], sys.argv[2]
texts = set()
for k in range(1, 11):
    code = open(f"{d}/{name}.{k}.code").read().strip()
    body = open(f"{d}/{name}.{k}.json", encoding="utf-8", errors="replace").read()
    assert code == "200", f"request {k}: HTTP {code}: {body[:300]}"
    texts.add(json.loads(body)["choices"][0]["text"])
assert len(texts) == 1, f"{len(texts)} different texts: {sorted(texts)}"
print(texts.pop(), file=open(f"{d}/{name}.text", "w", encoding="utf-8"))
PY
}
# served_by ADDR: successful requests in the access log whose last upstream was ADDR
# (a line: status, the upstreams tried, their statuses: "200 A, B 502, 200")
served_by() {
  awk -v a="$1" '$1 == 200 { n = split($0, f, /[ ,]+/); if (f[(n - 1) / 2 + 1] == a) c++ } END { print c + 0 }' "$dir/access.log"
}
# logged N: waits (up to 10 s) until the access log has N lines (nginx writes a line when the
# request is finalised, which can be just after curl has the whole answer)
logged() {
  i=0
  while [ "$(wc -l <"$dir/access.log")" -lt "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
# retried: requests that tried more than one upstream
retried() { awk '$1 == 200 && /,/ { c++ } END { print c + 0 }' "$dir/access.log"; }
# requests_200 PORT: the replica's qllm_requests_total{status="200"}
requests_200() {
  curl -s "http://127.0.0.1:$1/metrics" | sed -n 's/^qllm_requests_total{status="200"} \([0-9][0-9]*\).*$/\1/p'
}

# before: both replicas up
batch before
logged 10
a1=$(served_by "127.0.0.1:$port1"); a2=$(served_by "127.0.0.1:$port2")
m1=$(requests_200 "$port1"); m2=$(requests_200 "$port2")
[ $((a1 + a2)) -eq 10 ] || { cat "$dir/access.log"; fail "access log: $a1 + $a2 completions, expected 10"; }
[ "${m1:-0}" -gt 0 ] && [ "${m2:-0}" -gt 0 ] ||
  fail "not both replicas served: qllm_requests_total{status=\"200\"} $port1: ${m1:-none}, $port2: ${m2:-none}"
[ "$a1" -gt 0 ] && [ "$a2" -gt 0 ] || fail "not both replicas served: $a1 and $a2 in nginx's access log"

# a stream through nginx arrives whole, unbuffered, ending with [DONE]
code=$(curl -s -N -o "$dir/stream" -w '%{http_code}' -H 'Content-Type: application/json' \
  -d '{"prompt":"In the beginning","max_tokens":16,"temperature":0,"stream":true}' "$base/v1/completions")
[ "$code" = 200 ] || fail "stream through nginx: HTTP $code"
[ "$(grep -v '^$' "$dir/stream" | tail -n 1)" = "data: [DONE]" ] || { cat "$dir/stream"; fail "stream through nginx does not end with data: [DONE]"; }

# replica 1 stops (SIGTERM: exit 0 within 30 s); nginx sends everything to replica 2
kill -TERM "$pid1"
# a watchdog: SIGKILL after 30 s (killed itself, it takes its sleep along)
( sleep 30 & s=$!; trap 'kill "$s"; exit 0' TERM; wait "$s"; kill -KILL "$pid1" 2>/dev/null ) >/dev/null 2>&1 &
watchdog=$!
rc=0
wait "$pid1" || rc=$?
pid1=
kill "$watchdog" 2>/dev/null || true
[ "$rc" -eq 0 ] || fail "replica 1 exited with status $rc after SIGTERM (137: still running after 30 s)"
: >"$dir/access.log"
batch after
logged 10
b1=$(served_by "127.0.0.1:$port1"); b2=$(served_by "127.0.0.1:$port2"); r=$(retried)
[ "$b1" -eq 0 ] && [ "$b2" -eq 10 ] || { cat "$dir/access.log"; fail "after the stop: replica 1 $b1, replica 2 $b2, expected 0 and 10"; }
cmp -s "$dir/before.text" "$dir/after.text" || fail "the text changed after the stop"

echo "before the stop: 10 requests, replica 1 (port $port1) served $a1, replica 2 (port $port2) served $a2"
echo "after SIGTERM to replica 1: 10 requests, all 200, replica 2 served $b2 ($r retried from replica 1)"
echo "serve nginx: ok"
