#!/usr/bin/env bash
# The 100 M-edge end-to-end run of issue 5 (docs/benchmarks.md, "100 M-edge run"):
# 10 M nodes, 100 M stored directed edges (synth --avg-degree 10, preprocess --undirected),
# 64-d features; preprocess, 2 layers (train: fixed budget of 50 steps, width 64, 4 heads,
# batch 512; embed), and the linear probe on layer 2, with --memory-limit 4GB.
# Probe: 1 split x 1000 epochs, mode chosen by --memory-limit (a documented deviation from 5 splits: see the docs).
# Each stage runs as its own process (wall time, CPU time and peak RSS per stage); prints
# the markdown table and writes bench-results/bench-100M.{json,md}.
# Disk: 2.8 GB of inputs + 7.7 GB of store under /tmp/bench/100M, deleted at the end unless
# --keep is passed. Extra arguments go to tools/bench (e.g. --keep, --skip numpy,sampler).
set -euo pipefail
cd "$(dirname "$0")/.."
df -h /tmp | tail -1 >&2
uptime >&2
exec .venv/bin/python tools/bench --scale 100M --memory-limit 4GB --steps 50 --dim 64 \
    --heads 4 --batch-size 512 --num-splits 1 --probe-epochs 1000 \
    --workdir /tmp/bench/100M --out bench-results "$@"
