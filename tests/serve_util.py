"""What the qllm serve test scripts share: a server on a free loopback port, checks, metrics."""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

runner = os.environ.get("QLLM_RUNNER", "").split()
_tmp = tempfile.TemporaryDirectory()


class Checks:
    def __init__(self, name):
        self.name, self.n, self.failed = name, 0, False

    def fail(self, msg):
        print("%s: FAIL: %s" % (self.name, msg), file=sys.stderr)
        if os.environ.get("QLLM_TEST_KEEP_GOING") == "1":  # list every failure (for a report)
            self.failed = True
            return
        sys.exit(1)

    def __call__(self, cond, msg):
        if not cond:
            self.fail(msg)
        self.n += 1


class Server:
    def __init__(self, check, qllm, model, *args):
        self.check = check
        self.err = os.path.join(_tmp.name, "s%d.err" % time.time_ns())
        self.p = subprocess.Popen(runner + [qllm, "serve", "-m", model, "--port", "0"] + list(args),
                                  stdout=subprocess.DEVNULL, stderr=open(self.err, "w"))
        for _ in range(600):
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(self.err).read())
            if m:
                self.port = int(m.group(1))
                return
            if self.p.poll() is not None:
                check.fail("the server exited: " + open(self.err).read())
            time.sleep(0.1)
        check.fail("the server did not start")

    def post(self, path, body, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        return text

    def metric(self, name):  # name may carry labels: qllm_requests_total{status="499"}
        m = re.search(r"^%s (\S+)$" % re.escape(name), self.metrics(), re.M)
        return m.group(1) if m else None

    def rss_kib(self, field="VmRSS"):
        for line in open("/proc/%d/status" % self.p.pid):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def stop(self, timeout=60):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None
