#!/usr/bin/env python
"""Kill trials: SIGKILL a stage at a random moment, rerun it, and compare with an unkilled run.

    python tools/kill_trials.py --stage STAGE [--trials 20] [--seed 0] [--workdir DIR]
                                [--nodes N] [--threads T] [--reference-runs 2] [--json OUT]

STAGE is one of preprocess, preprocess-w2, train, embed, embed-streamed, embed-w2, evaluate,
run (docs/reliability.md, "Kill trials", gives each one's command). The input graph is made
once with `lrgi-ooc synth` (plus the preprocess / train / embed the stage needs first, the
"prerequisite" state). The stage then runs uninterrupted, timed: the first run is the
reference, and a second one must end in the same state (else the stage is not reproducible
and the tool stops); the shorter of the two is the kill window. Each trial copies the prerequisite state, starts the same command in its own
process group, SIGKILLs the whole group (Dask workers included) at a moment drawn uniformly
in [0, reference seconds) from a seeded RNG, then reruns the command until it exits 0.

Every run happens at the same path (WORKDIR/live), so paths recorded in the store are the
same in every run. A trial is identical when, after the rerun: nothing is left beside the
store (staging, work, backup or lock files); the store holds the same files;
every array's chunk files are byte-identical (float arrays under `layers/`, the trained
weights and layer outputs, may instead differ by at most 1e-6, and the trial lists the
arrays that needed it); every zarr.json is equal, the root's attributes except the volatile
fields (VOLATILE below: times, sizes of this process, work done by the last attempt);
evaluate's JSON is equal (scores to 1e-9). A trial fails when the state differs, when a
rerun (never killed) exits non-zero, or when no attempt completes. A failing trial's
directory is kept (WORKDIR/failed-K) and its differences are printed.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lrgi_ooc.store import layout  # noqa: E402  (after the path insert)

TOLERANCE = 1e-6            # float tables of layer outputs and weights
SCORE_TOLERANCE = 1e-9      # evaluate's scores
MAX_ATTEMPTS = 4            # the killed one and up to three reruns
LAYERS_PREFIX = layout.weights_key(1).split("/")[0] + "/"    # "layers/": tolerant arrays

# root attributes that differ between two correct runs: they describe the run, not the data
# (a path of keys; * matches one key)
VOLATILE = {
    "stages.*.completed_at": "time of completion",
    "stages.*.seconds": "wall time of the last attempt",
    "stages.*.peak_rss_mb": "peak RSS of the last attempt's process",
    "stages.embed/*.edges": "edges aggregated by the last attempt (a resumed run only counts "
                            "the chunks it wrote; paired with seconds as its throughput)",
    "stages.embed/*.plan.output_blocks": "tasks the last attempt ran",
    "stages.embed/*.plan.output_chunks": "output chunks the last attempt computed",
    "stages.embed/*.plan.bytes_read": "bytes the last attempt read",
    "provenance.created_at": "time the store was created",
}

SYNTH = ["--avg-degree", "20", "--feature-dim", "32", "--classes", "8", "--seed", "0"]
TRAIN = ["--layer", "1", "--dim", "64", "--heads", "4", "--batch-size", "256", "--seed", "0"]
CHUNK = ["--chunk-rows", "16384"]


# ------------------------------------------------------------------ the stages
@dataclass
class Stage:
    """`prereq`: the state each trial starts from; `command(work)`: the argv after
    `python -m lrgi_ooc`; `outputs`: JSON files compared besides the store."""
    nodes: int
    prereq: str                              # "input", "preprocessed", "trained", "embedded"
    command: Callable[["Work"], list[str]]
    outputs: tuple[str, ...] = ()
    needs_flag: tuple[str, str] | None = None    # (command, flag) that must exist
    extra_dirs: tuple[str, ...] = ()         # other directories of live/ compared byte by byte
    threads: int | None = None               # default --threads (None: leave the environment)


@dataclass
class Work:
    root: Path
    nodes: int

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def prereq(self) -> Path:
        return self.root / "prereq"

    @property
    def live(self) -> Path:
        return self.root / "live"

    @property
    def store(self) -> Path:
        return self.live / "graph.zarr"

    @property
    def ref(self) -> Path:
        return self.root / "ref"


def _preprocess(work: Work, *extra: str) -> list[str]:
    return ["preprocess", "--edges", str(work.input / "edges"), "--features",
            str(work.input / "features.npy"), "--labels", str(work.input / "labels.npy"),
            "--undirected", "--memory-limit", "128MB", "--out", str(work.store), "--overwrite",
            *extra]


def _train(work: Work) -> list[str]:
    return ["train", str(work.store), *TRAIN, "--steps", "120", "--checkpoint-every", "10"]


def _embed(work: Work, *extra: str) -> list[str]:
    return ["embed", str(work.store), "--layer", "1", *CHUNK, *extra]


def _evaluate(work: Work) -> list[str]:
    return ["evaluate", str(work.store), "--layer", "1", "--json", str(work.live / "eval.json"),
            "--num-splits", "2", "--epochs", "400"]


def _run(work: Work) -> list[str]:
    cfg = work.root / "run.toml"
    cfg.write_text(f"""store = '{work.store}'
num_layers = 2

[synth]
out = '{work.live / "input"}'
nodes = {work.nodes}
avg_degree = 20
feature_dim = 32
classes = 8
seed = 0

[preprocess]
undirected = true
memory_limit = '128MB'

[train]
dim = 32
heads = 4
steps = 40
checkpoint_every = 10

[evaluate]
num_splits = 2
epochs = 200
""")
    return ["run", str(cfg)]


STAGES: dict[str, Stage] = {
    "preprocess": Stage(2_500_000, "input", lambda w: _preprocess(w)),
    "preprocess-w2": Stage(2_500_000, "input", lambda w: _preprocess(w, "--workers", "2")),
    # torch's training with 2 threads differs between two uninterrupted processes (up to
    # 1.5e-6 in the weights after 60 steps, more in the tables after 2 layers): with one
    # thread it is bit-identical, so the trials measure the resume, not thread scheduling
    "train": Stage(200_000, "preprocessed", _train, threads=1),
    "embed": Stage(1_000_000, "trained", lambda w: _embed(w)),
    "embed-streamed": Stage(1_000_000, "trained", lambda w: _embed(w, "--source-blocks", "3"),
                            needs_flag=("embed", "--source-blocks")),
    "embed-w2": Stage(1_000_000, "trained", lambda w: _embed(w, "--workers", "2")),
    "evaluate": Stage(200_000, "embedded", _evaluate, outputs=("eval.json",)),
    "run": Stage(100_000, "none", _run, outputs=("graph.zarr.runs/evaluate/results.json",),
                 extra_dirs=("input",), threads=1),
}


# ------------------------------------------------------------------ running commands
def _env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, LRGI_OOC_QUIET="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[k] = str(threads)
    return env


def cli(args: list[str], env: dict[str, str], log: Path | None = None) -> None:
    """A set-up command that must succeed."""
    r = subprocess.run([sys.executable, "-m", "lrgi_ooc", *args], env=env, cwd=REPO,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ lrgi-ooc {' '.join(args)}\n{r.stdout}{r.stderr}")
    if r.returncode != 0:
        sys.exit(f"set-up command failed (exit {r.returncode}): lrgi-ooc {' '.join(args)}\n"
                 f"{r.stderr}")


def _group_alive(pgid: int) -> bool:
    import psutil
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def attempt(args: list[str], env: dict[str, str], log: Path,
            kill_at: float | None) -> tuple[int, float, bool]:
    """Run once in a new process group; with `kill_at`, SIGKILL the group after that many
    seconds. Returns (exit code, seconds, whether the kill landed before the exit)."""
    with open(log, "a") as out:
        out.write(f"$ lrgi-ooc {' '.join(args)}" + (f"   [kill at {kill_at:.3f} s]" if
                                                     kill_at is not None else "") + "\n")
        out.flush()
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "lrgi_ooc", *args], env=env, cwd=REPO,
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True)
        killed = False
        if kill_at is not None:
            try:
                p.wait(timeout=kill_at)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
        rc = p.wait()
        secs = time.monotonic() - t0
        # the whole group must be gone before the next attempt (Dask workers, their nannies)
        deadline = time.monotonic() + 30
        while _group_alive(p.pid):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                sys.exit(f"process group {p.pid} survives SIGKILL")
            time.sleep(0.05)
        out.write(f"[exit {rc} after {secs:.3f} s]\n")
    return rc, secs, killed


# ------------------------------------------------------------------ preparing the state
def prepare(work: Work, stage: Stage, env: dict[str, str]) -> None:
    """The input graph and the prerequisite state, made once (kept in WORKDIR for reuse)."""
    log = work.root / "setup.log"
    stamp = work.root / "prereq.json"
    want = {"prereq": stage.prereq, "nodes": work.nodes, "synth": SYNTH, "train": TRAIN}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return
    shutil.rmtree(work.prereq, ignore_errors=True)
    shutil.rmtree(work.input, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    work.prereq.mkdir(parents=True)
    if stage.prereq != "none":
        cli(["synth", "--out", str(work.input), "--nodes", str(work.nodes), *SYNTH], env, log)
    if stage.prereq in ("preprocessed", "trained", "embedded"):
        _fresh_live(work, None)
        cli(_preprocess(work), env, log)
        if stage.prereq in ("trained", "embedded"):
            cli(["train", str(work.store), *TRAIN, "--steps", "20"], env, log)
        if stage.prereq == "embedded":
            cli(_embed(work), env, log)
        shutil.rmtree(work.prereq)
        os.rename(work.live, work.prereq)
    stamp.write_text(json.dumps(want))


def _fresh_live(work: Work, source: Path | None) -> None:
    shutil.rmtree(work.live, ignore_errors=True)
    if source is None:
        work.live.mkdir(parents=True)
    else:
        shutil.copytree(source, work.live, symlinks=True)


# ------------------------------------------------------------------ comparing
@dataclass
class Comparison:
    diffs: list[str] = field(default_factory=list)
    tolerance: list[str] = field(default_factory=list)     # arrays equal only to TOLERANCE
    max_diff: float = 0.0

    @property
    def identical(self) -> bool:
        return not self.diffs


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _drop_volatile(attrs: dict[str, Any]) -> dict[str, Any]:
    """The root attributes without the VOLATILE fields."""
    a = json.loads(json.dumps(attrs))

    def drop(node: Any, parts: list[str]) -> None:
        if not isinstance(node, dict):
            return
        head, rest = parts[0], parts[1:]
        for k in [k for k in node if fnmatch.fnmatchcase(k, head)]:
            if rest:
                drop(node[k], rest)
            else:
                node.pop(k)
    for pattern in VOLATILE:
        drop(a, pattern.split("."))
    return a


def _json_diff(a: Any, b: Any, where: str, out: list[str], tol: float = 0.0) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'reference' if k in a else 'trial'}")
            else:
                _json_diff(a[k], b[k], f"{where}.{k}", out, tol)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _json_diff(x, y, f"{where}[{i}]", out, tol)
    elif (isinstance(a, float) and isinstance(b, float) and tol
          and (abs(a - b) <= tol or (math.isnan(a) and math.isnan(b)))):
        return
    elif a != b:
        out.append(f"{where}: reference {json.dumps(a)[:200]} != trial {json.dumps(b)[:200]}")


def _arrays(root: Path) -> dict[str, dict[str, Any]]:
    """key -> zarr.json of every array (walking the group tree's metadata files)."""
    out = {}
    for meta in root.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") == "array":
            out[str(meta.parent.relative_to(root))] = doc
    return out


def _array_files(root: Path, key: str) -> list[str]:
    d = root / key
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def compare_store(ref: Path, got: Path, cmp: Comparison) -> None:
    fr, fg = _files(ref), _files(got)
    for f in sorted(fr - fg):
        cmp.diffs.append(f"store: {f} missing")
    for f in sorted(fg - fr):
        cmp.diffs.append(f"store: extra file {f}")
    # metadata: every zarr.json equal, the root's attributes without the volatile fields
    for f in sorted(x for x in fr & fg if x.endswith("zarr.json")):
        a, b = json.loads((ref / f).read_text()), json.loads((got / f).read_text())
        if f == "zarr.json":
            a["attributes"] = _drop_volatile(a.get("attributes", {}).get(layout.ATTR, {}))
            b["attributes"] = _drop_volatile(b.get("attributes", {}).get(layout.ATTR, {}))
        _json_diff(a, b, f"store {f}", cmp.diffs)
    # arrays: chunk files byte-identical, or float tables of layers/ within TOLERANCE
    ra, rg = layout.GraphStore(ref, _check=False), layout.GraphStore(got, _check=False)
    for key, meta in sorted(_arrays(ref).items()):
        if not (got / key / "zarr.json").is_file():
            continue                                    # reported as missing files
        files = [f for f in _array_files(ref, key) if f != "zarr.json"]
        differ = [f for f in files if (got / key / f).is_file()
                  and (ref / key / f).read_bytes() != (got / key / f).read_bytes()]
        if not differ:
            continue
        dtype = np.dtype(meta["data_type"])
        if not (key.startswith(LAYERS_PREFIX) and dtype.kind == "f"):
            cmp.diffs.append(f"array {key}: {len(differ)} chunk file(s) differ ({differ[0]}, "
                             f"...) and it must be byte-identical")
            continue
        worst = _max_abs_diff(ra, rg, key)
        cmp.max_diff = max(cmp.max_diff, worst)
        if worst <= TOLERANCE:
            cmp.tolerance.append(f"{key} ({worst:.2e})")
        else:
            cmp.diffs.append(f"array {key}: max abs diff {worst:.3e} > {TOLERANCE:g}")


def _max_abs_diff(a: Any, b: Any, key: str, rows: int = 65536) -> float:
    n = a.info(key).num_rows
    worst = 0.0
    for s in range(0, n, rows):
        x = a.read_rows(key, s, min(s + rows, n)).astype(np.float64)
        y = b.read_rows(key, s, min(s + rows, n)).astype(np.float64)
        if np.isnan(x).any() or np.isnan(y).any():
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                return math.inf
            x, y = np.nan_to_num(x), np.nan_to_num(y)
        if x.size:
            worst = max(worst, float(np.max(np.abs(x - y))))
    return worst


def compare(work: Work, stage: Stage, got: Path) -> Comparison:
    cmp = Comparison()
    # beside the store: no staging, work, backup or lock file left behind by the killed run
    names_ref, names_got = {p.name for p in work.ref.iterdir()}, {p.name for p in got.iterdir()}
    cmp.diffs += [f"left beside the store: {n}" for n in sorted(names_got - names_ref)]
    cmp.diffs += [f"missing beside the store: {n}" for n in sorted(names_ref - names_got)]
    compare_store(work.ref / "graph.zarr", got / "graph.zarr", cmp)
    for name in stage.outputs:
        a, b = work.ref / name, got / name
        if not b.is_file():
            cmp.diffs.append(f"{name}: missing")
            continue
        _json_diff(json.loads(a.read_text()), json.loads(b.read_text()), name, cmp.diffs,
                   SCORE_TOLERANCE)
    for d in stage.extra_dirs:
        fr, fg = _files(work.ref / d), _files(got / d)
        cmp.diffs += [f"{d}/{f}: missing" for f in sorted(fr - fg)]
        cmp.diffs += [f"{d}/{f}: extra file" for f in sorted(fg - fr)]
        for f in sorted(fr & fg):
            if (work.ref / d / f).read_bytes() != (got / d / f).read_bytes():
                cmp.diffs.append(f"{d}/{f}: bytes differ")
    return cmp



# ------------------------------------------------------------------ the trials
def has_flag(command: str, flag: str, env: dict[str, str]) -> bool:
    r = subprocess.run([sys.executable, "-m", "lrgi_ooc", command, "--help"], env=env,
                       cwd=REPO, capture_output=True, text=True)
    return flag in r.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True, choices=sorted(STAGES))
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--workdir", help="default: a new temporary directory (kept on failure)")
    ap.add_argument("--nodes", type=int, help="graph size (default: per stage, so that one "
                    "reference run takes about 5-15 s on 2 cores)")
    ap.add_argument("--threads", type=int, help="OMP/MKL/NUMBA_NUM_THREADS of every run; 0 "
                    "leaves them unset (default: 1 for train and run, whose torch training is "
                    "bit-reproducible only with one thread; unset for the others)")
    ap.add_argument("--reference-runs", type=int, default=2, help="uninterrupted runs before "
                    "the trials (default 2: they must agree; the shorter one's duration is "
                    "the kill window)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    stage = STAGES[a.stage]
    threads = stage.threads if a.threads is None else (a.threads or None)
    env = _env(threads)
    if stage.needs_flag and not has_flag(*stage.needs_flag, env):
        print(f"{a.stage}: skipped: `lrgi-ooc {stage.needs_flag[0]}` has no "
              f"{stage.needs_flag[1]} option yet")
        if a.json:
            Path(a.json).write_text(json.dumps({"stage": a.stage, "skipped": True}, indent=2))
        return 0
    root = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix=f"kill-{a.stage}-"))
    root.mkdir(parents=True, exist_ok=True)
    work = Work(root.resolve(), a.nodes or stage.nodes)
    prepare(work, stage, env)
    args = stage.command(work)
    print(f"stage {a.stage}: lrgi-ooc {' '.join(args)}")
    print(f"workdir {work.root}, nodes {work.nodes}, threads {threads or 'default'}, "
          f"kill seed {a.seed}")

    # the reference: an uninterrupted run, then a second one that must give the same state
    # (so that a difference after a kill is the kill's doing); its duration: the shorter
    log = work.root / "reference.log"
    log.unlink(missing_ok=True)
    ref_times = []
    for n in range(a.reference_runs):
        _fresh_live(work, work.prereq)
        rc, secs, _ = attempt(args, env, log, None)
        if rc != 0:
            print(log.read_text()[-3000:])
            sys.exit(f"the reference run failed (exit {rc}); log: {log}")
        ref_times.append(secs)
        if n == 0:
            shutil.rmtree(work.ref, ignore_errors=True)
            os.rename(work.live, work.ref)
            continue
        cmp = compare(work, stage, work.live)
        if not cmp.identical:
            for d in cmp.diffs[:20]:
                print(f"    {d}")
            sys.exit(f"two uninterrupted runs differ (kept in {work.live}): the stage is not "
                     "reproducible, so kill trials cannot judge it (try --threads 1)")
        shutil.rmtree(work.live)
    ref_secs = min(ref_times)
    print("reference: " + ", ".join(f"{t:.2f} s" for t in ref_times)
          + (" (identical)" if len(ref_times) > 1 else ""))

    rng = random.Random(f"{a.seed}:{a.stage}")     # other fractions per stage
    moments = [rng.uniform(0.0, ref_secs) for _ in range(a.trials)]
    print("kill moments (s): " + ", ".join(f"{m:.3f}" for m in moments))
    results = []
    for k, kill_at in enumerate(moments):
        _fresh_live(work, work.prereq)
        log = work.root / f"trial-{k}.log"
        log.unlink(missing_ok=True)
        codes: list[int] = []
        landed = False
        for n in range(MAX_ATTEMPTS):
            rc, _, killed = attempt(args, env, log, kill_at if n == 0 else None)
            codes.append(rc)
            landed = landed or killed
            if rc == 0:
                break
        cmp = compare(work, stage, work.live) if codes[-1] == 0 else \
            Comparison([f"no attempt completed: exit codes {codes}"])
        # every attempt but the killed one must succeed: a rerun that fails is a failure
        unkilled = codes[1:] if landed else codes
        if codes[-1] == 0 and any(c != 0 for c in unkilled):
            cmp.diffs.append(f"an attempt that was not killed exited non-zero: {codes}")
        rec = {"trial": k, "kill_at": round(kill_at, 3), "killed": landed,
               "attempts": len(codes), "exit_codes": codes, "identical": cmp.identical,
               "tolerance": cmp.tolerance, "max_diff": cmp.max_diff, "diffs": cmp.diffs[:50]}
        results.append(rec)
        status = "identical" if cmp.identical else "DIFFERS"
        tol = f", within {TOLERANCE:g}: {len(cmp.tolerance)}" if cmp.tolerance else ""
        print(f"trial {k}: kill at {kill_at:6.3f} s ({'landed' if landed else 'after exit'}), "
              f"exit codes {codes}: {status}{tol}", flush=True)
        if cmp.identical:
            shutil.rmtree(work.live)
        else:
            for d in cmp.diffs[:20]:
                print(f"    {d}")
            kept = work.root / f"failed-{k}"
            shutil.rmtree(kept, ignore_errors=True)
            os.rename(work.live, kept)
            print(f"    kept in {kept} (log {log})")
    identical = sum(r["identical"] for r in results)
    failures = len(results) - identical
    tolerant = sorted({t.split(" ")[0] for r in results for t in r["tolerance"]})
    landed = sum(r["killed"] for r in results)
    print(f"{a.stage}: {len(results)} trials ({landed} killed before the end), {identical} "
          f"identical, {failures} failures"
          + (f"; compared to {TOLERANCE:g}: {', '.join(tolerant)}" if tolerant else ""))
    doc = {"stage": a.stage, "command": "lrgi-ooc " + " ".join(args), "nodes": work.nodes,
           "threads": threads, "seed": a.seed, "reference_seconds": [round(t, 3) for t in ref_times],
           "kills_landed": sum(r["killed"] for r in results),
           "trials": len(results), "identical": identical, "failures": failures,
           "tolerance": TOLERANCE, "compared_to_tolerance": tolerant,
           "ignored_fields": VOLATILE, "workdir": str(work.root), "results": results}
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=2))
    if not a.workdir and failures == 0:
        shutil.rmtree(work.root, ignore_errors=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
