#!/usr/bin/env bash
# Issue 12's "larger than memory" benchmarks, one after the other (docs/benchmarks.md,
# "Tables larger than memory"):
#   1. embed at 100 M stored edges (10 M nodes, width 64, 4 heads) in memory, float32 and float16;
#   2. the same embed beside a balloon that leaves AVAIL GB (default 0.9: the 2.7 GB float32
#      projection is 3x that), streamed (--memory-limit 512MB) and by the memory map (the
#      in-memory plan; killed after MMAP_LIMIT s, default 600, which then bounds its edges/s);
#   3. train on a 2.56 GB input table (5 M x 128 float32) in memory, then beside a balloon
#      leaving AVAIL GB, by pread + row cache (--memory-limit 256MB) and by the memory map.
# Caches are dropped (root) before every run beside a balloon. Logs and JSON under WORK.
#   tools/bench_ooc.sh WORK [AVAIL] [MMAP_LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: tools/bench_ooc.sh WORK [AVAIL_GB] [MMAP_LIMIT_S]}
avail=${2:-0.9}
mmap_limit=${3:-600}
py=.venv/bin/python
mkdir -p "$work"
lock() {  # GB to lock so that about $avail GB stay available, once the last balloon is gone
  $py - "$avail" <<'PY'
import re, sys, time
def avail():
    return int(re.search(r"MemAvailable:\s+(\d+)", open("/proc/meminfo").read())[1]) * 1024
a = avail()
while True:                    # a balloon being released frees its memory over seconds
    time.sleep(2)
    b = avail()
    if abs(b - a) < 100 << 20:
        break
    a = b
print(f"{b / 2**30 - float(sys.argv[1]):.2f}")
PY
}
export OMP_WAIT_POLICY=PASSIVE
uptime
$py tools/bench_embed.py --work "$work/embed" --nodes 10000000 --avg-degree 10 --repeat 2 \
    --memory-limit 8GB --json "$work/embed-mem-f32.json"
$py tools/bench_embed.py --work "$work/embed" --nodes 10000000 --avg-degree 10 --repeat 2 \
    --memory-limit 8GB --table-dtype float16 --json "$work/embed-mem-f16.json"
$py tools/bench_embed.py --work "$work/embed" --nodes 10000000 --avg-degree 10 --repeat 1 \
    --memory-limit 512MB --balloon "$(lock)" --drop-caches --json "$work/embed-balloon-streamed.json"
timeout "$mmap_limit" $py tools/bench_embed.py --work "$work/embed" --nodes 10000000 \
    --avg-degree 10 --repeat 1 --memory-limit 8GB --balloon "$(lock)" --drop-caches \
    --json "$work/embed-balloon-mmap.json" || echo "mmap embed beside the balloon: stopped after $mmap_limit s (exit $?)"
$py tools/bench_train_rows.py --work "$work/train" --nodes 5000000 --avg-degree 10 \
    --feature-dim 128 --steps 40 --memory-limit 256MB --readers pread,mmap \
    --balloon "$(lock)" --drop-caches --json "$work/train-rows.json"
uptime
