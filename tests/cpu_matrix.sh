#!/usr/bin/env bash
# qllm on CPUs this machine is not: the x86-64 build run natively and as other CPUs under
# qemu-user (qemu-x86_64-static -cpu MODEL), and an aarch64 cross build under
# qemu-aarch64-static, each with the kernel table it must choose.
#   Haswell: AVX2 + FMA + F16C, no AVX-512 -> avx2
#   Nehalem: no AVX at all                  -> scalar
#   aarch64:max (Armv8.x+ with dotprod)     -> neon_dotprod
#   aarch64:cortex-a53 (Armv8.0, no dotprod) -> neon
# For each: `qllm info` (the table), the kernel, model, session, batch and C ABI suites, and greedy
# `qllm run` on generated Q4_0, Q8_0 and F16 models with 1, 2 and 3 threads. Every run's text must
# equal the native 1-thread run's byte for byte (the tables are bit-identical to the scalar
# reference, and threads split rows, never a reduction). Natively, every runnable table forced
# with QLLM_ISA is compared the same way.
#
# usage: tests/cpu_matrix.sh BUILD_DIR [--aarch64 AARCH64_BUILD_DIR] [CPU ...]
#   CPU: an x86 model (Haswell, Nehalem, ...) or aarch64:MODEL (max, cortex-a53, ...);
#   default: Haswell Nehalem. The aarch64 build is a full cross build (.ci/run).
set -euo pipefail
build=$(cd "$1" && pwd)
shift
abuild=""
if [ "${1:-}" = --aarch64 ]; then
  abuild=$(cd "$2" && pwd)
  shift 2
fi
cpus=("$@")
[ ${#cpus[@]} -gt 0 ] || cpus=(Haswell Nehalem)
qllm="$build/examples/qllm"
qemu=$(command -v qemu-x86_64-static || true)
[ -n "$qemu" ] || { echo "cpu_matrix: qemu-x86_64-static not found (apt-get install qemu-user-static)"; exit 1; }
[ "$(uname -m)" = x86_64 ] || { echo "cpu_matrix: x86-64 only"; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "  ok    $*"; }
bad() { failed=$((failed + 1)); echo "  FAIL  $*"; }

# qemu warns on stderr about CPUID bits TCG lacks (Haswell's invpcid, rtm); keep the rest
as_cpu() {
  local cpu=$1
  shift
  case $cpu in
    native) "$@" ;;
    aarch64:*) qemu-aarch64-static -L /usr/aarch64-linux-gnu -cpu "${cpu#aarch64:}" "$@" ;;
    *) "$qemu" -cpu "$cpu" "$@" ;;
  esac 2> >(grep -v "TCG doesn't support requested feature" >&2)
}
# the build whose programs run as CPU
build_for() { case $1 in aarch64:*) echo "$abuild" ;; *) echo "$build" ;; esac; }

expected_table() {
  case $1 in
    Haswell | Broadwell | Skylake-Client) echo avx2 ;;
    Nehalem | Westmere | Penryn | Conroe | core2duo | qemu64) echo scalar ;;
    aarch64:max | aarch64:neoverse-n1 | aarch64:a64fx) echo neon_dotprod ;;
    aarch64:cortex-a53 | aarch64:cortex-a57 | aarch64:cortex-a72) echo neon ;;
    *) echo "" ;;
  esac
}

prompt="Once upon a time, in a small village by the sea,"
types=(q4_0 q8_0 f16)
for t in "${types[@]}"; do
  "$qllm" gen-random --shape small --type "$t" --seed 11 --out "$dir/$t.gguf" >/dev/null
done
# and the shipped trained model (Q8_0), whose peaked distributions make greedy ties rare
cp "$(dirname "$0")/../models/tiny-kjv.q8_0.gguf" "$dir/shipped.gguf"
types+=(shipped)

gen() {  # gen CPU TYPE THREADS OUT [env...]
  local cpu=$1 t=$2 n=$3 out=$4
  shift 4
  (
    for kv in "$@"; do export "${kv?}"; done
    as_cpu "$cpu" "$(build_for "$cpu")/examples/qllm" run -m "$dir/$t.gguf" -p "$prompt" -n 40 --temp 0 \
      -t "$n" -q >"$out"
  )
}

echo "== native: $("$qllm" info | sed -n 's/^kernels: *//p')"
for t in "${types[@]}"; do
  gen native "$t" 1 "$dir/ref-$t.txt"
  [ -s "$dir/ref-$t.txt" ] || { bad "native $t produced no text"; continue; }
  for n in 2 3; do
    gen native "$t" "$n" "$dir/out.txt"
    cmp -s "$dir/ref-$t.txt" "$dir/out.txt" && ok "native $t -t $n == -t 1" || bad "native $t -t $n differs"
  done
  for isa in $("$qllm" info | sed -n 's/^ *runnable: *//p'); do
    gen native "$t" 2 "$dir/out.txt" QLLM_ISA="$isa"
    cmp -s "$dir/ref-$t.txt" "$dir/out.txt" && ok "native QLLM_ISA=$isa $t == native" ||
      bad "native QLLM_ISA=$isa $t differs"
  done
done
echo "   reference text (q4_0): $(head -c 120 "$dir/ref-q4_0.txt")"
echo "   reference text (shipped): $(head -c 160 "$dir/ref-shipped.txt")"

for cpu in "${cpus[@]}"; do
  want=$(expected_table "$cpu")
  echo "== $cpu (expects the ${want:-best} table)"
  b=$(build_for "$cpu")
  if [ -z "$b" ]; then
    bad "$cpu: no aarch64 build given (--aarch64 DIR)"
    continue
  fi
  if ! as_cpu "$cpu" "$b/examples/qllm" info >"$dir/info.txt"; then
    bad "$cpu: qllm info died"
  else
    got=$(sed -n 's/^kernels: *\([a-z0-9_]*\).*/\1/p' "$dir/info.txt")
    if [ -z "$want" ] || [ "$got" = "$want" ]; then ok "$cpu: qllm info chooses $got"; else bad "$cpu: qllm info chooses '$got', expected $want"; fi
  fi
  suites=(kernels model session batch capi)
  # CPUs in CPU_MATRIX_TEXT_ONLY (space-separated) skip the suites: .ci/run's aarch64 step has
  # run every suite as qemu-aarch64's default CPU (max) already
  case " ${CPU_MATRIX_TEXT_ONLY:-} " in *" $cpu "*) suites=(); echo "   (suites: run by the caller)" ;; esac
  for s in "${suites[@]}"; do
    # the C ABI's retrieval and chain-of-thought cases hold no ISA-dependent code (their model
    # calls are the session's, checked here) and take minutes emulated: the native suites run them;
    # of the batch suite, the batched-equals-solo logits (every kernel table's GEMM tiles at
    # several row counts), not the engine's scheduling
    filter=()
    [ "$s" = capi ] && filter=(--test-case-exclude='*retrieval*,*chain of thought through*')
    [ "$s" = batch ] && filter=(--test-case='batch_context*')
    # of the session suite, not the speculation chi-square (12,000 sampled generations: a
    # statistic of the sampler over logits that are bit-identical on every table; native runs it)
    [ "$s" = session ] && filter=(--test-case-exclude='*chi-square*')
    if as_cpu "$cpu" "$b/tests/test_$s" "${filter[@]}" >"$dir/suite.txt" 2>&1; then
      ok "$cpu: test_$s ($(grep -o 'assertions: *[0-9]*' "$dir/suite.txt" | tr -s ' '))"
    else
      bad "$cpu: test_$s"
      tail -20 "$dir/suite.txt"
    fi
  done
  for t in "${types[@]}"; do
    for n in 1 2 3; do
      if ! gen "$cpu" "$t" "$n" "$dir/out.txt"; then
        bad "$cpu: qllm run $t -t $n died"
      elif cmp -s "$dir/ref-$t.txt" "$dir/out.txt"; then
        ok "$cpu: qllm run $t -t $n == native"
      else
        bad "$cpu: qllm run $t -t $n differs from native"
        diff <(fold -w 80 "$dir/ref-$t.txt") <(fold -w 80 "$dir/out.txt") | head -5 || true
      fi
    done
  done
done
echo "cpu_matrix: $passed passed, $failed failed"
[ "$failed" = 0 ]
