#!/bin/sh
# The Python package (python/) as a user gets it, against this build's libqllm.so:
#  1. the README's route: a virtual environment made from scratch, `pip install` from the
#     checkout (offline: --no-build-isolation, Debian's setuptools and wheel), which bundles this
#     build's library; the package's pytest suite runs there from outside the source tree;
#  2. a wheel built from the checkout, installed into a second, bare environment (no system
#     packages, no build tree, no QLLM_LIBRARY): the bundled library alone must serve it.
set -eu
qllm=$(readlink -f "$1"); lib=$(readlink -f "$2"); src=$(readlink -f "$3")
. "$(dirname "$0")/prepare.sh"
py=/usr/bin/python3
[ -x "$py" ] || py=python3
unset QLLM_LIBRARY
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
libdir=$(dirname "$lib")
$py -m venv --system-site-packages "$dir/venv"
QLLM_LIB_DIR="$libdir" "$dir/venv/bin/pip" install --quiet --no-build-isolation --no-index "$src/python"
# the suite, from a folder holding only the tests (the checkout is not importable from there)
mkdir "$dir/t"
cp "$src/python/tests/test_qllm.py" "$dir/t/"
(cd "$dir/t" && QLLM_CLI="$qllm" QLLM_SHIPPED_MODEL="$src/models/tiny-kjv.q8_0.gguf" \
   QLLM_TEST_MODEL="$dir/m.gguf" QLLM_TEST_L3_MODEL="$dir/l3.gguf" QLLM_TEST_EXPECTED="$dir/expected.txt" \
   QLLM_TEST_VENV="$dir/venv" \
   QLLM_EXAMPLE_RAG_COT="$src/examples/python/rag_cot.py" \
   "$dir/venv/bin/python" -B -m pytest -q -p no:cacheprovider test_qllm.py 2>&1)
# the README's three-line program, as written there, in that environment from the checkout's root
python3 - "$src/README.md" "$dir/readme.py" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
block = re.search(r"\n### Python: `pip install`\n.*?Then:\n\n((?:    [^\n]*\n)+)", text, re.S).group(1)
open(sys.argv[2], "w").write("".join(l[4:] + "\n" for l in block.splitlines()))
PY
(cd "$src" && "$dir/venv/bin/python" -B "$dir/readme.py") >"$dir/readme.txt"
[ "$(wc -c <"$dir/readme.txt")" -gt 40 ] && echo "README's program: $(head -c 120 "$dir/readme.txt")"
# a wheel that carries the library, in an environment that has nothing else
QLLM_LIB_DIR="$libdir" "$dir/venv/bin/pip" wheel --quiet --no-build-isolation --no-index --no-deps \
  -w "$dir/dist" "$src/python"
ls "$dir/dist"/qllm-*-linux_*.whl >/dev/null  # platform-tagged: it holds a native library
$py -m venv "$dir/bare"
"$dir/bare/bin/pip" install --quiet --no-index "$dir/dist"/qllm-*.whl
(cd / && "$dir/bare/bin/python" -B - "$dir/m.gguf" "$prompt" "$dir/expected.txt" "$dir/bare" <<'PY'
import sys
import qllm
model, prompt, expected, env = sys.argv[1:]
assert qllm.__file__.startswith(env), qllm.__file__
assert qllm._library_path().startswith(env), qllm._library_path()
with qllm.Model(model) as m, m.session(temperature=0, n_ctx=256) as s:
    text = s.generate(prompt, max_tokens=24, stop_at_eos=False)
    assert text == open(expected, encoding="utf-8").read(), (text, open(expected).read())
    e = s.embed("hello")
    assert isinstance(e, list) and len(e) == m.info["n_embd"], type(e)  # no NumPy here: a list
print("python wheel in a bare environment: ok (%s)" % qllm._library_path())
PY
)
echo "python package: ok"
