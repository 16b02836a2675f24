"""`lrgi-ooc run CONFIG.toml`: every stage of a pipeline, resuming.

`run` resumes: every stage records the hash of its configuration and of everything upstream,
so a stage is skipped only when nothing that feeds it changed; a changed stage is recomputed
together with everything downstream (their recorded upstream hashes no longer match).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.memory import parse_size
from lrgi_ooc.cluster import tasks as cluster
from lrgi_ooc.ingest import synth
from lrgi_ooc.stages import config as cfgmod
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.embed import DEFAULT_MAX_EDGES, WORKER_MODULES, embed_layer
from lrgi_ooc.stages.preprocess import WORKER_MODULES as PREPROCESS_WORKER_MODULES
from lrgi_ooc.stages.preprocess import PreprocessOptions, run_preprocess
from lrgi_ooc.stages.train import run_train
from lrgi_ooc.store.layout import GraphStore, config_hash

PIPELINE_KEYS = {"store", "num_layers", "synth", "preprocess", "train", "layer", "embed",
                 "evaluate", "dask"}
EMBED_KEYS = {"max_edges", "device"}
DASK_KEYS = {"workers", "scheduler", "gpu_task"}
EVALUATE_KEYS = {"layers", "num_splits", "seed", "epochs", "json", "stream", "memory_limit",
                 "device"}
INPUT_STAGE = "pipeline/input"


def _preprocess_table(table: dict[str, Any], synth_out: Path | None) -> dict[str, Any]:
    """A [preprocess] table with the [synth] outputs as its inputs (unless it names them)."""
    t = dict(table)
    if synth_out is not None:
        t.setdefault("edges", str(synth_out / "edges"))
        t.setdefault("features", str(synth_out / "features.npy"))
        t.setdefault("labels", str(synth_out / "labels.npy"))
        t.setdefault("undirected", True)
    return t


def _preprocess_options(t: dict[str, Any], out: Path, source: str) -> PreprocessOptions:
    fields = {f.name for f in dataclasses.fields(PreprocessOptions)} - {"out", "overwrite"}
    opts = {k.replace("-", "_"): v for k, v in t.items()}
    cfgmod.check_keys(opts, fields, f"{source} [preprocess]")
    return PreprocessOptions(out=out, overwrite=True, **opts)


def _preprocess_argv(t: dict[str, Any], out: Path) -> list[str]:
    """The `preprocess` command line the table stands for: the input record's identity
    (stores built by earlier versions, which ran that command line, stay up to date)."""
    argv = ["preprocess", "--out", str(out), "--overwrite"]
    for k, v in t.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                argv.append(flag)
        else:
            argv += [flag, str(v)]
    return argv


def _run_synth(table: dict[str, Any], source: str) -> Path:
    t = dict(table)
    if "out" not in t:
        raise InputError(f"{source}: [synth] needs 'out' (directory for the generated files)")
    out = Path(t.pop("out"))
    out.parent.mkdir(parents=True, exist_ok=True)
    marker = out / "synth.json"
    if marker.exists():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = {}
        if done.get("pipeline_hash") == config_hash(t):
            print(f"synth: {out} already generated with this configuration (skipping)")
            return out
    synth.generate(out, overwrite=True, **{k.replace("-", "_"): v for k, v in t.items()})
    doc = json.loads(marker.read_text())
    doc["pipeline_hash"] = config_hash(t)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, marker)
    return out


def _layer_configs(doc: dict[str, Any], n: int, source: str) -> list[TrainConfig]:
    base = cfgmod.build(TrainConfig, doc.get("train", {}), f"{source} [train]")
    per = doc.get("layer", {})
    cfgmod.check_keys(per, {str(i) for i in range(1, n + 1)}, f"{source} [layer]")
    return [cfgmod.build(TrainConfig, per.get(str(i), {}), f"{source} [layer.{i}]", base=base)
            for i in range(1, n + 1)]


def _dask_settings(doc: dict[str, Any], source: str,
                   override: dict[str, Any] | None) -> dict[str, Any]:
    """[dask] workers / scheduler / gpu_task, command-line values taking precedence."""
    d = dict(cfgmod.check_keys(doc.get("dask", {}), DASK_KEYS, f"{source} [dask]"))
    for k, v in (override or {}).items():
        if v is not None:
            d[k] = v
    if override and override.get("workers") is not None:
        d.pop("scheduler", None)
    if override and override.get("scheduler") is not None:
        d.pop("workers", None)
    cluster.check_options(d.get("workers"), d.get("scheduler"), f"{source} [dask]")
    if not isinstance(d.get("gpu_task", False), bool):
        raise InputError(f"{source} [dask]: gpu_task must be true or false")
    return d


def run_pipeline(path: str | Path | dict[str, Any], store_override: str | None = None,
                 layers_override: int | None = None,
                 dask: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`path`: a TOML file or the same document as a dict; `dask`: workers / scheduler /
    gpu_task from the command line (over the [dask] table)."""
    source = "config" if isinstance(path, dict) else str(path)
    doc = path if isinstance(path, dict) else cfgmod.load_toml(path)
    doc = cfgmod.check_keys(doc, PIPELINE_KEYS, source)
    store_path = store_override or doc.get("store")
    if not isinstance(store_path, str):
        raise InputError(f"{source}: 'store' (path of the graph store) is required")
    n = layers_override if layers_override is not None else doc.get("num_layers", 2)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"{source}: num_layers must be a positive integer, got {n!r}")
    for name in ("synth", "preprocess", "train", "layer", "embed", "evaluate", "dask"):
        if name in doc and not isinstance(doc[name], dict):
            raise InputError(f"{source}: [{name}] must be a table")
    layer_cfgs = _layer_configs(doc, n, source)
    embed_opts = cfgmod.check_keys(doc.get("embed", {}), EMBED_KEYS, f"{source} [embed]")
    eval_opts = dict(cfgmod.check_keys(doc.get("evaluate", {}), EVALUATE_KEYS,
                                       f"{source} [evaluate]"))
    out = Path(store_path)
    dk = _dask_settings(doc, source, dask)
    with cluster.dask_client(dk.get("workers"), dk.get("scheduler"),
                             gpu=bool(dk.get("gpu_task")),
                             preload=WORKER_MODULES + PREPROCESS_WORKER_MODULES) as client:
        _run_stages(doc, source, out, n, layer_cfgs, embed_opts, client,
                    bool(dk.get("gpu_task")))
    return _evaluate(out, n, eval_opts)


def _run_stages(doc: dict[str, Any], source: str, out: Path, n: int,
                layer_cfgs: list[TrainConfig], embed_opts: dict[str, Any], client: Any,
                gpu_task: bool) -> None:
    # inputs: synth -> preprocess, skipped when the store was built from the same inputs
    if "synth" in doc or "preprocess" in doc:
        out.parent.mkdir(parents=True, exist_ok=True)
        synth_out = _run_synth(doc["synth"], source) if "synth" in doc else None
        table = _preprocess_table(doc.get("preprocess", {}), synth_out)
        opts = _preprocess_options(table, out, source)
        inp = {"argv": _preprocess_argv(table, out)[3:],
               "synth": config_hash(doc.get("synth", {}))}
        done = False
        if out.exists():
            try:
                done = GraphStore(out).stage_complete(INPUT_STAGE, inp)
            except InputError:
                done = False
        if done:
            print(f"preprocess: {out} already built from these inputs (skipping)")
        else:
            run_preprocess(opts, client)
            GraphStore(out).mark_stage(INPUT_STAGE, inp)
    elif not out.exists():
        raise InputError(f"{source}: store {out} does not exist and the config names no inputs "
                         "([preprocess] or [synth])")

    for i, cfg in enumerate(layer_cfgs, start=1):
        run_train(out, i, cfg, client, gpu_task)
        embed_layer(out, i, max_edges=int(embed_opts.get("max_edges", DEFAULT_MAX_EDGES)),
                    device=str(embed_opts.get("device", cfg.device)), client=client)


def _evaluate(out: Path, n: int, eval_opts: dict[str, Any]) -> list[dict[str, Any]]:
    from lrgi_ooc.stages.evaluate import format_table, run_probe_table   # loads torch
    layers = eval_opts.pop("layers", list(range(0, n + 1)))
    json_out = eval_opts.pop("json", None)
    if "memory_limit" in eval_opts:
        eval_opts["memory_limit"] = parse_size(eval_opts["memory_limit"], "[evaluate] memory_limit")
    store = GraphStore(out)
    if store.labels() is None:
        print("evaluate: the store has no labels; skipping the linear probe")
        return []
    results = run_probe_table(store, list(layers), **eval_opts)
    print(format_table(results))
    dest = Path(json_out) if json_out else store.run_dir("evaluate") / "results.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(results, indent=2))
    print(f"results written to {dest}")
    return results
