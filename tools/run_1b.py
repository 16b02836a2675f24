#!/usr/bin/env python
"""The billion-edge run of issue 12, every stage under a balloon (docs/benchmarks.md).

    .venv/bin/python tools/run_1b.py --workdir /data/1b [--available 6] [--keep]
    .venv/bin/python tools/run_1b.py --workdir /tmp/1b-dry --nodes 1000000 --available 0  # dry run

synth N nodes at mean undirected degree 20 (`preprocess --undirected` stores both directions:
N * 20 directed edges, 1 B at the default 50 M), 64-d float16 features, 8 classes, labels on
1.4 % of the nodes (11:1:2 train/val/test, as ogbn-papers100M); preprocess --memory-limit
3GB --feature-dtype float16 (the stored features stay half size); two layers (width 64,
4 heads, float16 tables, a fixed budget of --steps steps of --batch-size seeds); embed both with --memory-limit 3GB (the planner decides how to stream
the projection); probe
layers 0 and 2 on the stored split.

Before the first stage tools/balloon.py locks MemAvailable - AVAILABLE GB, so every stage and
the page cache share about AVAILABLE GB (the MemAvailable measured after locking is what the
table states). Each stage is its own process, waited for with wait4: wall, CPU (user + sys)
and peak RSS are that process tree's, and the disk bytes read / written are its block I/O
(ru_inblock / ru_oublock x 512, the read_bytes / write_bytes of /proc/PID/io). Disk used is
`du` of the work directory after the stage. Writes WORKDIR/run_1b.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TOOLS))

from bench_embed import balloon  # noqa: E402  the balloon every "larger than memory" figure uses
from balloon import meminfo  # noqa: E402

CLI = [sys.executable, "-m", "lrgi_ooc"]


def du(path: Path) -> int:
    """Bytes allocated under `path` (st_blocks), as `du` counts them."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def stage(name: str, cmd: list[str], work: Path, log: Path) -> dict:
    """Run one stage as its own process tree and measure it; stop the run if it fails."""
    shown = "lrgi-ooc " + shlex.join(cmd[3:]) if cmd[:3] == CLI else shlex.join(cmd)
    print(f"# {name}: {shown}  (load {os.getloadavg()[0]:.2f})", flush=True)
    env = dict(os.environ, LRGI_OOC_QUIET="1", PYTHONPATH=str(REPO))
    t = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n# {name}: {shown}\n")
        out.flush()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    rc = os.waitstatus_to_exitcode(status)
    row = {"stage": name, "command": shown, "rc": rc, "wall_s": round(wall, 1),
           "cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "peak_rss_mb": ru.ru_maxrss // 1024,
           "read_gb": round(ru.ru_inblock * 512 / 1e9, 2),
           "written_gb": round(ru.ru_oublock * 512 / 1e9, 2),
           "disk_used_gb": round(du(work) / 1e9, 2),
           "mem_available_gb_after": round(meminfo("MemAvailable") / 2**30, 2)}
    print("#   " + json.dumps(row), flush=True)
    if rc:
        raise SystemExit(f"{name} failed (exit {rc}); see {log}")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, type=Path, help="scratch (must not exist)")
    ap.add_argument("--nodes", type=int, default=50_000_000)
    ap.add_argument("--available", type=float, default=6.0,
                    help="GB of memory to leave (balloon the rest; 0: no balloon)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per layer")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--probe-epochs", type=int, default=1000)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--resume", action="store_true",
                    help="continue a stopped run in WORKDIR: the stages its run_1b.json lists "
                         "are kept, the others run (each from its start)")
    a = ap.parse_args()
    # SIGTERM ends like Ctrl-C: the balloon's context manager then unlocks the memory
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work: Path = a.workdir
    if work.exists() and not a.resume:
        raise SystemExit(f"--workdir {work}: exists (--resume continues it)")
    work.mkdir(parents=True, exist_ok=True)
    inp, store, log = work / "input", work / "graph.zarr", work / "stages.log"
    rows: list[dict] = []
    res: dict = {"nodes": a.nodes, "steps": a.steps, "batch_size": a.batch_size,
                 "available_asked_gb": a.available, "rows": rows, "cores": os.cpu_count(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "mem_total_gb": round(meminfo("MemTotal") / 2**30, 2)}
    if a.resume and (work / "run_1b.json").exists():
        old = json.loads((work / "run_1b.json").read_text())
        rows.extend(old["rows"])
        res["earlier_sessions"] = [{k: old.get(k) for k in ("started", "finished",
                                                           "mem_available_gb", "balloon_gb")}]
        res["earlier_sessions"] += old.get("earlier_sessions", [])
    done = {r["stage"] for r in rows}

    def run(name: str, cmd: list[str]) -> bool:
        if name in done:
            print(f"# {name}: done in an earlier session (kept)", flush=True)
            return False
        rows.append(stage(name, cmd, work, log))
        return True
    lock = None
    if a.available > 0:
        lock = f"{max(meminfo('MemAvailable') / 2**30 - a.available, 0.0):.2f}"
    train = ["--dim", "64", "--heads", "4", "--steps", str(a.steps), "--batch-size",
             str(a.batch_size), "--device", "cpu"]
    try:
        with balloon(lock, work) as available:
            res["balloon_gb"] = lock
            res["mem_available_gb"] = None if available is None else round(available / 2**30, 2)
            print(f"# balloon {lock} GB: MemAvailable {res['mem_available_gb']} GB", flush=True)
            run("synth", CLI + [
                "synth", "--out", str(inp), "--nodes", str(a.nodes), "--avg-degree", "20",
                "--feature-dim", "64", "--feature-dtype", "float16", "--classes", "8",
                "--labelled-fraction", "0.014", "--seed", "0"])
            run("preprocess", CLI + [
                "preprocess", "--edges", str(inp / "edges"), "--features",
                str(inp / "features.npy"), "--labels", str(inp / "labels.npy"),
                "--train", str(inp / "train.npy"), "--val", str(inp / "val.npy"),
                "--test", str(inp / "test.npy"), "--undirected", "--feature-dtype", "float16",
                "--out", str(store), "--memory-limit", "3GB"])
            for layer in (1, 2):
                run(f"train {layer}", CLI + ["train", str(store), "--layer", str(layer),
                                             *train])
                run(f"embed {layer}", CLI + [
                    "embed", str(store), "--layer", str(layer), "--table-dtype", "float16",
                    "--memory-limit", "3GB", "--device", "cpu"])
            for layer in (0, 2):
                js = work / f"evaluate-{layer}.json"
                if not run(f"evaluate {layer}", CLI + [
                        "evaluate", str(store), "--layer", str(layer), "--epochs",
                        str(a.probe_epochs), "--memory-limit", "3GB", "--json", str(js)]):
                    continue
                ev = json.loads(js.read_text())
                rows[-1].update(metric=ev["metric"], test_mean=ev["test_mean"],
                                val_mean=ev["val_mean"])
    finally:
        res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        if store.exists():
            from lrgi_ooc.store.layout import GraphStore
            g = GraphStore(store)
            res["stored_edges"] = g.num_edges
            res["stage_records"] = g.stages()
        (work / "run_1b.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(table(res))
    if not a.keep:
        import shutil
        for p in (inp, store):
            shutil.rmtree(p, ignore_errors=True)
    return 0


def table(res: dict) -> str:
    """Markdown: one row per stage, and the pipeline's total (synth excluded)."""
    cols = ["stage", "wall s", "CPU s", "peak RSS MB", "read GB", "written GB", "disk used GB",
            "result"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        extra = (f"{r['metric']} {100 * r['test_mean']:.2f} % (val {100 * r['val_mean']:.2f})"
                 if "test_mean" in r else "")
        out.append(f"| {r['stage']} | {r['wall_s']:,.1f} | {r['cpu_s']:,.1f} | "
                   f"{r['peak_rss_mb']:,} | {r['read_gb']} | {r['written_gb']} | "
                   f"{r['disk_used_gb']} | {extra} |")
    pipe = [r for r in res["rows"] if r["stage"] != "synth"]
    if pipe:
        out.append(f"| **pipeline (no synth)** | **{sum(r['wall_s'] for r in pipe):,.1f}** | "
                   f"{sum(r['cpu_s'] for r in pipe):,.1f} | "
                   f"{max(r['peak_rss_mb'] for r in pipe):,} | | | | |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
