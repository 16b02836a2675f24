#!/usr/bin/env bash
# The 1 B-edge run of issue 12 (docs/benchmarks.md, "1 B-edge run"): 50 M nodes, 1 B stored
# directed edges, 64-d float16 features, preprocess --memory-limit 3GB, 2 layers (width 64,
# 4 heads, float16 tables), embed both, probe layers 0 and 2; every stage beside a balloon
# that leaves 6 GB available. About 40 GB of disk under WORKDIR at the peak.
#   tools/run_1b.sh /var/tmp/1b [--keep]      (extra arguments go to tools/run_1b.py)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: tools/run_1b.sh WORKDIR [run_1b.py options]}
shift
df -h "$(dirname "$work")" | tail -1 >&2
uptime >&2
exec .venv/bin/python tools/run_1b.py --workdir "$work" "$@"
