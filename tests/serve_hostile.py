#!/usr/bin/env python3
"""qllm serve against hostile or careless HTTP clients: chunked bodies far over --max-body (a 413
at once, the server's memory bounded by the limit), malformed framing answered at once, a body
shorter than announced, an oversized head, pipelined requests answered in order, a stream whose
client leaves counted as 499 with its tokens, logit_bias keys that are not canonical ids, and
streamed usage only when asked for (as OpenAI sends it).

    serve_hostile.py QLLM MODEL
"""
import http.client
import json
import os
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import Checks, Server  # noqa: E402

qllm, model = sys.argv[1], sys.argv[2]
check = Checks("serve_hostile")
LIMIT = 64 * 1024
HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


class shared_file_socket:
    """http.client reads a response from sock.makefile() and closes it after the body: one
    buffered file, never closed, for several responses on one connection (pipelining)."""

    class _kept_open:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def close(self):
            pass

    def __init__(self, f):
        self.f = f

    def makefile(self, *a, **k):
        return self._kept_open(self.f)


def read_response(f):
    r = http.client.HTTPResponse(shared_file_socket(f))
    r.begin()
    return r, r.read()


def send_raw(port, head, body_parts=(), timeout=30):
    """Sends a head and body parts from a thread (the server may answer and close before the body
    is sent), and reads one response. Returns (status, body, seconds to the response, error)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent = {"bytes": 0}

    def writer():
        try:
            s.sendall(head)
            for p in body_parts:
                s.sendall(p)
                sent["bytes"] += len(p)
        except OSError:
            pass  # the server closed the connection after answering

    t0 = time.time()
    w = threading.Thread(target=writer)
    w.start()
    try:
        r, data = read_response(s.makefile("rb"))
        status, secs, err = r.status, time.time() - t0, None
    except Exception as e:  # noqa: BLE001
        status, data, secs, err = None, b"", time.time() - t0, repr(e)
    s.close()
    w.join(timeout=60)
    return status, data, secs, err, sent["bytes"]


def chunks(total, size):
    """A JSON-ish body of `total` bytes in chunks of `size` bytes, chunked-encoded, lazily."""
    piece = b"x" * size
    n = 0
    while n < total:
        k = min(size, total - n)
        yield b"%x\r\n" % k + piece[:k] + b"\r\n"
        n += k
    yield b"0\r\n\r\n"


def message(data):
    try:
        return json.loads(data)["error"]["message"]
    except Exception:  # noqa: BLE001
        return "(not an OpenAI error object: %r)" % data[:200]


s = Server(check, qllm, model, "--parallel", "2", "-c", "256", "-t", "1", "--max-body", str(LIMIT),
           "--read-timeout", "2")
try:
    # 1. chunked bodies over --max-body: 413 as soon as the limit is crossed, memory bounded by
    # the limit, not by the body (10x in small chunks, 1000x in large ones)
    st, data = s.post("/v1/completions", {"prompt": "In the", "max_tokens": 2})
    check(st == 200, "a warm-up request: HTTP %d" % st)
    hwm0 = s.rss_kib("VmHWM")
    for total, size in ((10 * LIMIT, 100), (1000 * LIMIT, 1 << 20)):
        st, data, secs, err, sent = send_raw(s.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunks(total, size))
        check(st == 413 and "larger than the server's limit of %d bytes" % LIMIT in message(data),
              "a chunked body of %d bytes in chunks of %d: HTTP %r %s %s" % (total, size, st, message(data), err))
        check(secs < 5, "the 413 for a chunked body of %d bytes took %.1f s" % (total, secs))
    grew = s.rss_kib("VmHWM") - hwm0
    # (sanitizers keep freed memory resident; a server holding the body would still pass 62 MiB)
    bound = 40 * 1024 if os.environ.get("QLLM_SANITIZED") == "1" else 16 * 1024
    check(grew < bound, "peak RSS grew by %d KiB over chunked bodies of up to %d MiB (limit %d KiB)"
          % (grew, 1000 * LIMIT >> 20, LIMIT >> 10))
    print("serve_hostile: chunked 10x and 1000x the limit: 413, peak RSS +%d KiB" % grew)
    # a chunked body under the limit is served
    body = json.dumps({"prompt": "In the beginning", "max_tokens": 3, "temperature": 0}).encode()
    st, data, secs, err, _ = send_raw(s.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n",
                                      [b"%x\r\n%s\r\n" % (len(body[:10]), body[:10]),
                                       b"%x\r\n%s\r\n0\r\n\r\n" % (len(body[10:]), body[10:])])
    check(st == 200 and json.loads(data)["usage"]["completion_tokens"] == 3,
          "a chunked body under the limit: HTTP %r %r" % (st, data[:200]))

    # 2. malformed framing: a JSON 400 (or 411/413/501) at once, not after the read timeout
    cases = [(b"Content-Length: -1\r\n", 400, "is not a length"),
             (b"Content-Length: 99999999999999999999999\r\n", 400, "is not a length"),
             (b"Content-Length: 12abc\r\n", 400, "is not a length"),
             (b"Content-Length: 10\r\nContent-Length: 11\r\n", 400, "several different Content-Length"),
             (b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n", 400, "both Content-Length and"),
             (b"Transfer-Encoding: gzip, chunked\r\n", 501, "not supported"),
             (b"", 411, "needs a Content-Length"),
             (b"Content-Length: %d\r\n" % (LIMIT + 1), 413, "larger than the server's limit")]
    for extra, want, text in cases:
        st, data, secs, err, _ = send_raw(s.port, HEAD + extra + b"\r\n")
        check(st == want and text in message(data) and secs < 1.5,
              "framing %r: HTTP %r in %.1f s: %s %s" % (extra, st, secs, message(data), err))
    # a body shorter than announced: 400 when the read timeout (2 s) ends, saying so
    st, data, secs, err, _ = send_raw(s.port, HEAD + b"Content-Length: 100\r\n\r\n", [b'{"prompt": "x"}'[:14]])
    check(st == 400 and "ended before its Content-Length of 100 bytes (14 received" in message(data) and secs < 6,
          "a short body: HTTP %r in %.1f s: %s %s" % (st, secs, message(data), err))
    # a head over 64 KiB: 431
    st, data, secs, err, _ = send_raw(s.port, HEAD + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 1000) for i in range(80))
                                      + b"Content-Length: 2\r\n\r\n{}")
    check(st == 431 and "headers are larger" in message(data), "a 80 KB head: HTTP %r %s %s" % (st, message(data), err))

    # what follows a refused request on its connection is never parsed as a request: the
    # connection closes (request smuggling); bodies for no endpoint, compressed or multipart bodies
    # are refused before they are read
    smug = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    cases = [(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nRange: bytes=zz\r\nContent-Length: %d\r\n\r\n" % len(smug)
              + smug, 416),
             (b"POST /v1/completions?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smug)
              + smug, 414),
             (b"DELETE /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
              % (len(smug), smug), 405),
             (b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smug) + smug, 404),
             (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
              b"Content-Length: %d\r\n\r\n" % len(smug) + smug, 415),
             (HEAD + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(smug) + smug, 415),
             # chunk data not followed by CRLF: httplib's reader took that for the end of the body
             (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}JUNK\r\n" + smug, 400),
             (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n" + smug, 400),
             (HEAD + b"Transfer-Encoding: chunked%20\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + smug, 501)]
    for raw, want in cases:
        c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        c.sendall(raw)
        f = c.makefile("rb")
        statuses = []
        try:
            while len(statuses) < 3:
                r, data = read_response(f)
                statuses.append(r.status)
        except Exception:  # noqa: BLE001  (the connection closed: nothing more)
            pass
        c.close()
        check(statuses == [want], "%r...: responses %r, want only %d" % (raw[:60], statuses, want))
    # Expect: 100-continue over the limit: the 413 instead of "100 Continue", before any body
    c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    c.sendall(HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (LIMIT * 100))
    first = c.recv(64)
    c.close()
    check(first.startswith(b"HTTP/1.1 413"), "Expect: 100-continue over the limit: %r" % first)
    # a client that shuts down its sending side after the request still gets the answer
    c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    c.shutdown(socket.SHUT_WR)
    r, data = read_response(c.makefile("rb"))
    c.close()
    check(r.status == 200 and b'"ok"' in data, "a half-closed client: HTTP %r" % r.status)

    # 3. pipelining: two requests in one write are both answered, in order, on the connection
    b1 = json.dumps({"prompt": "In the beginning", "max_tokens": 2, "temperature": 0}).encode()
    b2 = json.dumps({"prompt": "And the LORD said", "max_tokens": 3, "temperature": 0}).encode()
    conn = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    conn.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(b1) + b1 +
                 HEAD + b"Content-Length: %d\r\n\r\n" % len(b2) + b2 +
                 b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    f = conn.makefile("rb")
    got = []
    try:
        for _ in range(3):
            r, data = read_response(f)
            got.append((r.status, data))
    except Exception as e:  # noqa: BLE001
        got.append((None, repr(e).encode()))
    conn.close()
    check(len(got) == 3 and all(g[0] == 200 for g in got), "pipelined requests: %r" % [(g[0], g[1][:80]) for g in got])
    check(len(got) == 3 and all(g[0] == 200 for g in got) and
          json.loads(got[0][1])["usage"]["completion_tokens"] == 2 and
          json.loads(got[1][1])["usage"]["completion_tokens"] == 3 and b'"ok"' in got[2][1],
          "pipelined responses out of order: %r" % [g[1][:80] for g in got])

    # 4. logit_bias keys are canonical decimal token ids
    for key in ("+5", " 5", "05", "\t5", "5 ", "0x5", "1e1", "-0", ""):
        st, data = s.post("/v1/completions", {"prompt": "a", "max_tokens": 1, "logit_bias": {key: 1}})
        check(st == 400 and "is not a token id" in message(data), "logit_bias key %r: HTTP %d" % (key, st))
    for key in ("5", "0"):
        st, data = s.post("/v1/completions", {"prompt": "a", "max_tokens": 1, "logit_bias": {key: 1}})
        check(st == 200, "logit_bias key %r: HTTP %d %s" % (key, st, data[:200]))

    # 5. streamed usage: none unless stream_options.include_usage, then one last chunk with no choices
    def stream(body):
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        text = c.getresponse().read().decode()
        c.close()
        return [json.loads(l[6:]) for l in text.split("\n") if l.startswith("data: ") and l != "data: [DONE]"]
    ask = {"messages": [{"role": "user", "content": "Who made the earth?"}], "max_tokens": 5, "stream": True}
    ev = stream(ask)
    check(ev and not any("usage" in e for e in ev), "usage in a stream that did not ask for it: %r" % ev[-1])
    ev = stream(dict(ask, stream_options={"include_usage": True}))
    with_usage = [e for e in ev if "usage" in e]
    check(len(with_usage) == 1 and with_usage[0] is ev[-1] and ev[-1]["choices"] == [] and
          ev[-1]["usage"]["completion_tokens"] == 5, "include_usage: %r" % with_usage)

    # 6. a stream whose client leaves: 499, and its tokens counted
    gen0 = int(float(s.metric("qllm_generated_tokens_total")))
    c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    body = json.dumps({"prompt": "In the beginning", "max_tokens": 200, "stream": True,
                       "logit_bias": {"2": -100}}).encode()
    c.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while got.count(b"data: ") < 6:
        got += c.recv(4096)
    c.close()
    t0 = time.time()
    while s.metric('qllm_requests_total{status="499"}') is None and time.time() - t0 < 10:
        time.sleep(0.05)
    check(s.metric('qllm_requests_total{status="499"}') == "1", "an abandoned stream is not counted as 499:\n" +
          "\n".join(l for l in s.metrics().split("\n") if l.startswith("qllm_requests_total")))
    gen = int(float(s.metric("qllm_generated_tokens_total"))) - gen0
    check(gen >= 5, "an abandoned stream's tokens are not counted (%d)" % gen)
finally:
    rc = s.stop()
check(rc == 0, "exit status %r after SIGTERM" % rc)

# a refused request whose client then stays silent does not hold a connection thread (the
# lingering close ends after 200 ms of silence)
s = Server(check, qllm, model, "-c", "64", "-t", "1", "--http-threads", "2")
try:
    idle = []
    for _ in range(2):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        c.sendall(HEAD + b"\r\n")  # 411, then nothing
        idle.append(c)
    time.sleep(0.5)
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    c.request("GET", "/health")
    st = c.getresponse().status
    secs = time.time() - t0
    check(st == 200 and secs < 1.0, "/health behind two refused, silent clients: HTTP %d in %.2f s" % (st, secs))
    for c in idle:
        c.close()
finally:
    rc = s.stop()
check(rc == 0, "exit status %r after SIGTERM" % rc)
print("serve_hostile: %d checks passed" % check.n)
sys.exit(1 if check.failed else 0)
