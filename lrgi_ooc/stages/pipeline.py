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
from lrgi_ooc.stages.embed import (DEFAULT_MAX_EDGES, DEFAULT_TABLE_DTYPE, WORKER_MODULES,
                                   check_table_dtype, embed_layer)
from lrgi_ooc.stages.embed_stream import DEFAULT_MEMORY_LIMIT
from lrgi_ooc.stages.preprocess import WORKER_MODULES as PREPROCESS_WORKER_MODULES
from lrgi_ooc.stages.preprocess import PreprocessOptions, run_preprocess
from lrgi_ooc.stages.train import run_train
from lrgi_ooc.store.layout import GraphStore, config_hash
from lrgi_ooc.store.lock import writer_lock

PIPELINE_KEYS = {"store", "num_layers", "synth", "preprocess", "train", "layer", "embed",
                 "evaluate", "dask"}
EMBED_KEYS = {"max_edges", "device", "memory_limit", "source_blocks", "table_dtype"}
DASK_KEYS = {"workers", "scheduler", "gpu_task"}
EVALUATE_KEYS = {"layers", "num_splits", "seed", "epochs", "json", "stream", "memory_limit",
                 "device", "probe", "concat", "concat_raw", "metric",
                 "weight_decays"}
INPUT_STAGE = "pipeline/input"


def _preprocess_table(table: dict[str, Any], synth_out: Path | None) -> dict[str, Any]:
    """A [preprocess] table with the [synth] outputs as its inputs (unless it names them)."""
    t = dict(table)
    if synth_out is not None:
        t.setdefault("edges", str(synth_out / "edges"))
        t.setdefault("features", str(synth_out / "features.npy"))
        t.setdefault("labels", str(synth_out / "labels.npy"))
        t.setdefault("undirected", True)
        for part in ("train", "val", "test"):      # written by synth --labelled-fraction
            if (synth_out / f"{part}.npy").is_file():
                t.setdefault(part, str(synth_out / f"{part}.npy"))
    return t


def _preprocess_options(t: dict[str, Any], out: Path, source: str) -> PreprocessOptions:
    fields = {f.name for f in dataclasses.fields(PreprocessOptions)} - {"out", "overwrite"}
    opts = {k.replace("-", "_"): v for k, v in t.items()}
    cfgmod.check_keys(opts, fields, f"{source} [preprocess]")
    for f in dataclasses.fields(PreprocessOptions):     # flags: true/false; others: a value
        v = opts.get(f.name)
        if f.name in opts and (not isinstance(v, bool) if isinstance(f.default, bool) else
                               isinstance(v, bool) or not isinstance(v, (str, int))):
            want = "true or false" if isinstance(f.default, bool) else "a string or a number"
            raise InputError(f"{source} [preprocess] {f.name}: must be {want}, got {v!r}")
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
    _check_embed(embed_opts, source)
    eval_opts = dict(cfgmod.check_keys(doc.get("evaluate", {}), EVALUATE_KEYS,
                                       f"{source} [evaluate]"))
    _check_evaluate(eval_opts, source)
    _check_evaluate_values(eval_opts, n, source)
    if "synth" in doc:
        _check_synth(doc["synth"], source)
    out = Path(store_path)
    dk = _dask_settings(doc, source, dask)
    with writer_lock(out, "run", create=True), \
            cluster.dask_client(dk.get("workers"), dk.get("scheduler"),
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
                    device=str(embed_opts.get("device", cfg.device)), client=client,
                    memory_limit=embed_opts.get("memory_limit", DEFAULT_MEMORY_LIMIT),
                    source_blocks=embed_opts.get("source_blocks"),
                    table_dtype=embed_opts.get("table_dtype", DEFAULT_TABLE_DTYPE))


def _check_embed(embed_opts: dict[str, Any], source: str) -> None:
    """[embed]'s numeric options, checked before any stage runs."""
    me = embed_opts.get("max_edges", DEFAULT_MAX_EDGES)
    if not isinstance(me, int) or isinstance(me, bool) or me < 1:
        raise InputError(f"{source} [embed] max_edges: must be a positive integer, got {me!r}")
    if "memory_limit" in embed_opts:
        parse_size(str(embed_opts["memory_limit"]), f"{source} [embed] memory_limit")
    sb = embed_opts.get("source_blocks")
    if sb is not None and (not isinstance(sb, int) or isinstance(sb, bool) or sb < 1):
        raise InputError(f"{source} [embed] source_blocks: must be a positive integer, "
                         f"got {sb!r}")
    check_table_dtype(embed_opts.get("table_dtype", DEFAULT_TABLE_DTYPE),
                      f"{source} [embed] table_dtype")


def _check_evaluate(eval_opts: dict[str, Any], source: str) -> None:
    """[evaluate]'s probe options, checked before any stage runs, not after the training."""
    from lrgi_ooc.stages.evaluate import check_probe_options
    check_probe_options(eval_opts.get("probe", "lrgi"), eval_opts.get("metric"),
                        eval_opts.get("concat", False), eval_opts.get("concat_raw", False),
                        f"{source} [evaluate]")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_evaluate_values(eval_opts: dict[str, Any], n: int, source: str) -> None:
    """[evaluate]'s layers and numbers, checked before any stage runs (the probe runs last)."""
    where = f"{source} [evaluate]"
    layers = eval_opts.get("layers", [0])
    if not isinstance(layers, list) or not layers or \
            not all(_is_int(v) and 0 <= v <= n for v in layers):
        raise InputError(f"{where} layers: must be a non-empty list of layers in 0..{n} "
                         f"(num_layers), got {layers!r}")
    for k in ("num_splits", "epochs", "batch_rows"):
        if k in eval_opts and not (_is_int(eval_opts[k]) and eval_opts[k] >= 1):
            raise InputError(f"{where} {k}: must be a positive integer, got {eval_opts[k]!r}")
    if "seed" in eval_opts and not _is_int(eval_opts["seed"]):
        raise InputError(f"{where} seed: must be an integer, got {eval_opts['seed']!r}")
    if "memory_limit" in eval_opts:
        parse_size(str(eval_opts["memory_limit"]), f"{where} memory_limit")
    if eval_opts.get("stream") is not None and not isinstance(eval_opts["stream"], bool):
        raise InputError(f"{where} stream: must be true or false, got {eval_opts['stream']!r}")
    wd = eval_opts.get("weight_decays")
    if wd is not None:      # TOML types here; the values and the probe as evaluate checks them
        if not (isinstance(wd, list) and wd and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in wd)):
            raise InputError(f"{where} weight_decays: must be a non-empty list of numbers "
                             f">= 0, got {wd!r}")
        from lrgi_ooc.stages.evaluate import check_weight_decays
        check_weight_decays(eval_opts.get("probe", "lrgi"), wd, f"{where} weight_decays")
    if "json" in eval_opts and not isinstance(eval_opts["json"], str):
        raise InputError(f"{where} json: must be a path, got {eval_opts['json']!r}")
    if eval_opts.get("device") not in (None, "cpu", "cuda"):
        raise InputError(f"{where} device: must be cpu or cuda, got {eval_opts['device']!r}")


def _check_synth(table: dict[str, Any], source: str) -> None:
    """[synth]'s keys (`synth` options) and value types; generate() checks the ranges."""
    import inspect
    params = {k: p.default for k, p in inspect.signature(synth.generate).parameters.items()
              if p.default is not inspect.Parameter.empty and k != "overwrite"}
    opts = {k.replace("-", "_"): v for k, v in table.items()}
    cfgmod.check_keys(opts, set(params) | {"out"}, f"{source} [synth]")
    for k, v in opts.items():
        d = params.get(k, "")
        ok = (isinstance(v, str) if isinstance(d, str) else _is_int(v) if _is_int(d)
              else isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            want = "a string" if isinstance(d, str) else "an integer" if _is_int(d) else "a number"
            raise InputError(f"{source} [synth] {k}: must be {want}, got {v!r}")


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
