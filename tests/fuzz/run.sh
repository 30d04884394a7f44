#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan + UBSan, OpenMP off) and runs each one for
# SECONDS on a scratch copy of its committed corpus (tests/fuzz/corpus/<target>); a crash, leak,
# timeout or oversized allocation fails, and the input is left in BUILD/fuzz-artifacts/ to be
# committed as a regression input.
#   tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=$1
seconds=$2
shift 2
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf model tokenizer capi safetensors grammar)
if [ ! -f "$build/build.ninja" ]; then
  san="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize=function -fno-sanitize-recover=undefined"
  CC=clang-14 CXX=clang++-14 meson setup "$build" -Dfuzz=true -Dopenmp=disabled -Dbench=disabled \
    -Db_lundef=false -Dbuildtype=debugoptimized -Dc_args="$san" -Dcpp_args="$san" \
    -Dc_link_args="-fsanitize=address,undefined" -Dcpp_link_args="-fsanitize=address,undefined"
fi
ninja -C "$build" $(for t in "${targets[@]}"; do printf 'tests/fuzz/fuzz_%s ' "$t"; done)
mkdir -p "$build/fuzz-artifacts"
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  dict=()
  case $t in gguf | model) dict=(-dict=tests/fuzz/gguf.dict) ;; esac
  echo "== fuzz_$t: $seconds s"
  rc=0
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=3072 \
    -malloc_limit_mb=2048 -print_final_stats=1 "${dict[@]}" \
    -artifact_prefix="$build/fuzz-artifacts/$t-" "$work" "tests/fuzz/corpus/$t" \
    >"$build/fuzz-$t.log" 2>&1 || rc=$?
  grep -E "INITED|DONE|stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY" \
    "$build/fuzz-$t.log" | tail -n 8 || true
  rm -rf "$work"
  [ "$rc" = 0 ] || { echo "fuzz_$t failed (exit $rc): see $build/fuzz-artifacts/"; exit 1; }
done
echo "fuzzing: ok"
