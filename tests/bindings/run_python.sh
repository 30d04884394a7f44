#!/bin/sh
# The Python ctypes binding's tests on a generated model, against libqllm.so of this build.
set -eu
qllm=$(readlink -f "$1"); lib=$(readlink -f "$2"); src="$3"
. "$(dirname "$0")/prepare.sh"
cd "$src/examples/python"
QLLM_CLI="$qllm" QLLM_LIBRARY="$lib" QLLM_SHIPPED_MODEL="$src/models/tiny-kjv.q8_0.gguf" QLLM_TEST_MODEL="$dir/m.gguf" QLLM_TEST_EXPECTED="$dir/expected.txt" \
  python3 -B -m unittest -v test_qllm 2>&1
