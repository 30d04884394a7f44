#!/bin/sh
# libabigail comparison of libqllm.so's exported interface (the C ABI: functions, the structs and
# enums they reach) with the committed baseline capi/qllm.abi. Any difference fails; after an
# intended, compatible change (an appended field, a new function) regenerate the baseline:
#   tests/abi/check_abi_dump.sh build/libqllm.so.0 capi --update
set -eu
lib="$1"; capi="$2"; mode="${3:-}"
opts="--no-corpus-path --drop-undefined-syms --drop-private-types --no-show-locs --no-comp-dir-path
      --no-architecture --exported-interfaces-only --type-id-style hash"
if [ "$mode" = --update ]; then
  # shellcheck disable=SC2086
  abidw $opts --headers-dir "$capi" --out-file "$capi/qllm.abi" "$lib"
  echo "wrote $capi/qllm.abi"
  exit 0
fi
rc=0
abidiff --no-architecture "$capi/qllm.abi" "$lib" || rc=$?
if [ "$rc" != 0 ]; then
  echo "abidiff: exit $rc (4 = ABI change, 8 = incompatible change) against $capi/qllm.abi"
  exit 1
fi
echo "ABI matches $capi/qllm.abi"
