#!/bin/sh
# The exported symbols of libqllm.so must be exactly capi/qllm.symbols: a symbol that disappears
# breaks old programs, and a new one must be added to the list on purpose (with the header).
set -eu
lib="$1"
want="$2"
got=$(nm -D --defined-only "$lib" | awk '$3 != "" && $3 !~ /^QLLM_[0-9.]+$/ {print $3}' | LC_ALL=C sort)
if [ "$got" != "$(LC_ALL=C sort "$want")" ]; then
  echo "exported symbols differ from $want (< committed, > built):"
  echo "$got" | diff "$want" - || true
  exit 1
fi
# every symbol is named qllm_* and carries a version node of the ABI major (capi/qllm.map)
echo "$got" | grep -Eqv '^qllm_[a-z0-9_]*@@?QLLM_0(\.[0-9]+)?$' && { echo "unexpected symbol name"; exit 1; }
echo "$(echo "$got" | wc -l) symbols, as committed"
