#!/usr/bin/env bash
# Installs what is missing, builds qllm (release with debug info) and runs every test suite:
# kernels on every ISA this build has, model, tokenizer, sessions, CLI, C ABI, Python and Rust.
# Suites skipped for a missing tool (e.g. the npm registry unreachable) are listed last, with
# the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --tests
werror=()
[ "${QLLM_WERROR:-0}" = 1 ] && werror=(--werror)
if [ ! -f build/build.ninja ]; then
  meson setup build "${werror[@]}"
else
  # a build set up by the demo has the suites and benchmarks off
  meson configure build -Dtests=true -Dbench=enabled "${werror[@]}"
fi
ninja -C build
status=0
meson test -C build --no-rebuild --print-errorlogs || status=$?
python3 - <<'PY'
import json
skipped = []
for line in open("build/meson-logs/testlog.json"):
    t = json.loads(line)
    if t.get("result") == "SKIP":
        why = [l for l in (t.get("stdout") or "").splitlines() if l.strip()]
        skipped.append("  %s: %s" % (t["name"], why[-1] if why else "(no reason given)"))
if skipped:
    print("skipped suites (%d):" % len(skipped))
    print("\n".join(skipped))
PY
exit $status
