#!/bin/sh
# A real cgroup with a CPU quota of 1.5 CPUs: `qllm info` run inside it defaults to 2 threads
# only if the machine has more, and to 1 with a quota of 1 CPU. Needs root and a writable cpu
# controller (cgroup v1 or v2); skipped (exit 77) where there is none.
set -eu
qllm="$1"
name="qllm_test_$$"
dir=""
for base in /sys/fs/cgroup/cpu /sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup /sys/fs/cgroup/unified; do
  [ -w "$base" ] || continue
  if [ -f "$base/cpu.cfs_quota_us" ] || [ -f "$base/cpu.max" ] || grep -qw cpu "$base/cgroup.subtree_control" 2>/dev/null; then
    if mkdir "$base/$name" 2>/dev/null; then dir="$base/$name"; break; fi
  fi
done
[ -n "$dir" ] || { echo "no writable cgroup cpu controller: skipped"; exit 77; }
trap 'rmdir "$dir" 2>/dev/null || true' EXIT
if [ -f "$dir/cpu.cfs_quota_us" ]; then
  echo 100000 >"$dir/cpu.cfs_period_us"
  echo 100000 >"$dir/cpu.cfs_quota_us"
elif [ -f "$dir/cpu.max" ]; then
  echo "100000 100000" >"$dir/cpu.max"
else
  echo "cgroup $dir has no cpu files: skipped"
  exit 77
fi
out=$(env -u OMP_NUM_THREADS sh -c 'echo $$ >"$1/cgroup.procs" && exec ${QLLM_RUNNER:-} "$2" info' sh "$dir" "$qllm")
echo "$out" | grep threads
echo "$out" | grep -q '^threads: *1 (.*capped by the cgroup CPU quota' || {
  # a one-CPU machine needs no cap
  [ "$(nproc)" = 1 ] && echo "$out" | grep -q '^threads: *1 ' || exit 1
}
# OMP_NUM_THREADS is an explicit choice and wins over the quota
out=$(OMP_NUM_THREADS=3 sh -c 'echo $$ >"$1/cgroup.procs" && exec ${QLLM_RUNNER:-} "$2" info' sh "$dir" "$qllm")
echo "$out" | grep -q '^threads: *3 (OMP_NUM_THREADS=3'
