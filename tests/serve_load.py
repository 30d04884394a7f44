#!/usr/bin/env python3
"""qllm serve under load on loopback: 16 clients x 20 requests, streamed and not, greedy.

Every response must be complete and well-formed and equal, byte for byte, to the answer the same
request got alone; no slot may leak (metrics back to 0 active, 0 queued) and the server's
resident memory must not grow across the run (after a warm-up round).

    serve_load.py QLLM MODEL [CLIENTS REQUESTS]
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

qllm, model = sys.argv[1], sys.argv[2]
clients = int(sys.argv[3]) if len(sys.argv) > 3 else 16
per_client = int(sys.argv[4]) if len(sys.argv) > 4 else 20
runner = os.environ.get("QLLM_RUNNER", "").split()

PROMPTS = ["In the beginning", "And the LORD said unto Moses", "Blessed are the", "The earth was",
           "And Jesus answered", "Praise ye the LORD", "Now the serpent", "Hear, O Israel"]


def fail(msg):
    print("serve_load: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


tmp = tempfile.TemporaryDirectory()
err_path = os.path.join(tmp.name, "serve.err")
err = open(err_path, "w")
srv = subprocess.Popen(runner + [qllm, "serve", "-m", model, "--port", "0", "--parallel", "4", "-c", "256"],
                       stdout=subprocess.DEVNULL, stderr=err)
try:
    port = None
    for _ in range(600):
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(err_path).read())
        if m:
            port = int(m.group(1))
            break
        if srv.poll() is not None:
            fail("the server exited: " + open(err_path).read())
        time.sleep(0.1)
    if port is None:
        fail("the server did not start")

    def request(path, body=None, timeout=300):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        if body is None:
            c.request("GET", path)
        else:
            c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        return r, c

    def complete(kind, prompt, stream):
        body = {"max_tokens": 24, "temperature": 0, "stream": stream}
        if kind == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = prompt
            path = "/v1/completions"
        r, c = request(path, body)
        if r.status != 200:
            raise RuntimeError("%s %s: HTTP %d %s" % (path, prompt, r.status, r.read()[:200]))
        if not stream:
            j = json.loads(r.read())
            ch = j["choices"][0]
            text = ch["message"]["content"] if kind == "chat" else ch["text"]
            u = j["usage"]
            if u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"] or u["completion_tokens"] > 24:
                raise RuntimeError("bad usage %r" % u)
            if ch["finish_reason"] not in ("stop", "length"):
                raise RuntimeError("bad finish_reason %r" % ch["finish_reason"])
            c.close()
            return text
        text, finished, done = "", None, False
        for raw in r:  # server-sent events, one "data: ..." line each, then a blank line
            line = raw.decode("utf-8").rstrip("\n")
            if not line:
                continue
            if not line.startswith("data: "):
                raise RuntimeError("not an event line: %r" % line)
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            j = json.loads(data)
            ch = j["choices"][0]
            if kind == "chat":
                text += ch["delta"].get("content", "")
            else:
                text += ch["text"]
            if ch["finish_reason"] is not None:
                finished = ch["finish_reason"]
        c.close()
        if not done or finished not in ("stop", "length"):
            raise RuntimeError("incomplete stream (done %r, finish %r)" % (done, finished))
        return text

    def rss_kib():
        for line in open("/proc/%d/status" % srv.pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    # each request alone
    alone = {}
    for kind in ("text", "chat"):
        for p in PROMPTS:
            alone[(kind, p)] = complete(kind, p, False)
            if complete(kind, p, True) != alone[(kind, p)]:
                fail("streamed and non-streamed answers differ for %r" % p)

    errors = []
    mismatches = []
    lock = threading.Lock()

    def client(ci, n):
        for i in range(n):
            kind = "chat" if (ci + i) % 3 == 0 else "text"
            p = PROMPTS[(ci * 7 + i) % len(PROMPTS)]
            stream = (ci + i) % 2 == 0
            try:
                got = complete(kind, p, stream)
                if got != alone[(kind, p)]:
                    with lock:
                        mismatches.append((kind, p, stream, got))
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    errors.append(repr(e))

    def round_of(n):
        ts = [threading.Thread(target=client, args=(ci, n)) for ci in range(clients)]
        t0 = time.time()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.time() - t0

    round_of(2)  # warm-up: every slot and buffer used once
    rss0 = rss_kib()
    secs = round_of(per_client)
    rss1 = rss_kib()
    if errors:
        fail("%d requests failed, first: %s" % (len(errors), errors[0]))
    if mismatches:
        k, p, s, got = mismatches[0]
        fail("%d answers differ from the request alone, first: %s %r stream=%s: %r vs %r"
             % (len(mismatches), k, p, s, got, alone[(k, p)]))
    r, c = request("/metrics")
    metrics = r.read().decode()
    c.close()
    active = re.search(r"^qllm_active_slots (\d+)", metrics, re.M)
    queued = re.search(r"^qllm_queue_depth (\d+)", metrics, re.M)
    if not active or active.group(1) != "0" or not queued or queued.group(1) != "0":
        fail("slots or queue not back to 0:\n" + metrics)
    total = clients * per_client
    growth = rss1 - rss0
    print("serve_load: %d clients x %d requests = %d in %.1f s (%.1f req/s), all complete and equal to "
          "the requests alone; active slots 0, queue 0; RSS %d -> %d KiB (%+d KiB)"
          % (clients, per_client, total, secs, total / secs, rss0, rss1, growth))
    if growth > max(8192, rss0 // 10) and os.environ.get("QLLM_SANITIZED", "0") != "1":
        fail("resident memory grew by %d KiB during the run" % growth)
    srv.send_signal(signal.SIGTERM)
    try:
        rc = srv.wait(60)
    except subprocess.TimeoutExpired:
        fail("the server did not exit within 60 s of SIGTERM")
    if rc != 0:
        fail("the server exited with %d after SIGTERM" % rc)
finally:
    if srv.poll() is None:
        srv.kill()
        srv.wait()
