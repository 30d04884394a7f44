#!/bin/sh
# Allocation failure is an error, not a crash: under an address-space limit (ulimit -v) a model
# whose file cannot be mapped, and a session whose KV cache cannot be allocated, fail with one
# line (CLI) or QLLM_ERR_OUT_OF_MEMORY (C ABI), and the same commands work without the limit.
# With a third argument (bench_kernels): its 2 GiB bandwidth probe cannot be mapped, and the
# kernels are still measured, in GB/s without the fraction of a bandwidth it could not measure.
set -eu
qllm="$1"; complete="$2"; bench="${3:-}"
if [ -n "${QLLM_RUNNER:-}" ]; then echo "not under an emulator: skipped"; exit 77; fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
limit=$((1536 * 1024))  # KiB: 1.5 GiB of address space
# a window of 4 M positions: a 4 GiB f16 KV cache for the small shape (1 KiB per position)
"$qllm" gen-random --shape small --type q8_0 --ctx 4194304 --out "$dir/ctx.gguf" >/dev/null
# a file with a 3 GiB hole at its end: mapping it needs 3 GiB of address space, no memory
cp "$dir/ctx.gguf" "$dir/sparse.gguf"
truncate -s +3G "$dir/sparse.gguf"

# without the limit both work
"$qllm" run -m "$dir/ctx.gguf" -p "hi" -n 2 -t 1 -q >/dev/null
"$qllm" run -m "$dir/sparse.gguf" -p "hi" -n 2 -t 1 -c 64 -q >/dev/null

expect_oom_cli() {  # expect_oom_cli WORDS ARGS...
  words=$1
  shift
  if (ulimit -v $limit; "$qllm" "$@") >"$dir/out" 2>"$dir/err"; then
    echo "succeeded under ulimit -v $limit: $*"
    exit 1
  fi
  cat "$dir/err"
  [ "$(wc -l <"$dir/err")" -eq 1 ] || { echo "not one line"; exit 1; }
  grep -q "$words" "$dir/err" || { echo "expected '$words'"; exit 1; }
}
expect_oom_cli "cannot allocate the KV cache" run -m "$dir/ctx.gguf" -p "hi" -n 2 -t 1
expect_oom_cli "out of address space" run -m "$dir/sparse.gguf" -p "hi" -n 2 -t 1 -c 64

# the C ABI: a status, not a crash
for m in ctx sparse; do
  if (ulimit -v $limit; "$complete" "$dir/$m.gguf" "hi" 2) >"$dir/out" 2>"$dir/err"; then
    echo "qllm-complete succeeded under ulimit -v on $m.gguf"
    exit 1
  fi
  cat "$dir/err"
  grep -q "QLLM_ERR_OUT_OF_MEMORY" "$dir/err"
done

if [ -n "$bench" ]; then
  (ulimit -v $limit; QLLM_BENCH_QUICK=1 QLLM_BENCH_THREADS=1 "$bench" \
     --benchmark_filter='^q4_0/4096x4096/M1/t1/' --benchmark_min_time=0.01) >"$dir/out" 2>&1 ||
    { cat "$dir/out"; echo "bench_kernels failed under ulimit -v $limit"; exit 1; }
  cat "$dir/out"
  grep -q "read bandwidth not measured" "$dir/out"
  grep -q "q4_0/4096x4096/M1/t1.*GB/s=" "$dir/out"
  if grep -q "bw_frac" "$dir/out"; then echo "bw_frac without a bandwidth"; exit 1; fi
fi
echo "memory limits: ok"
