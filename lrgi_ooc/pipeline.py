"""`lrgi-ooc layer` (train + embed one layer) and `lrgi-ooc run CONFIG.toml` (everything).

`run` resumes: every stage records the hash of its configuration and of everything upstream,
so a stage is skipped only when nothing that feeds it changed; a changed stage is recomputed
together with everything downstream (their recorded upstream hashes no longer match).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from . import cluster
from . import config as cfgmod
from .config import TrainConfig
from .errors import InputError
from .embed import WORKER_MODULES
from .preprocess import WORKER_MODULES as PREPROCESS_WORKER_MODULES
from .store import GraphStore, config_hash

PIPELINE_KEYS = {"store", "num_layers", "synth", "preprocess", "train", "layer", "embed",
                 "evaluate", "dask"}
EMBED_KEYS = {"max_edges", "device"}
DASK_KEYS = {"workers", "scheduler", "gpu_task"}
EVALUATE_KEYS = {"layers", "num_splits", "seed", "epochs", "json", "stream", "memory_limit",
                 "device"}
INPUT_STAGE = "pipeline/input"


# ------------------------------------------------------------------ layer
def add_layer_arguments(p: argparse.ArgumentParser) -> None:
    from .train import add_train_options
    add_train_options(p)
    p.add_argument("--max-edges", type=int, default=None,
                   help="embed: edges processed at once (bounds memory)")
    cluster.add_dask_options(p, gpu=True)


def run_train(store: str | Path, layer: int, cfg: TrainConfig, client: Any = None,
              gpu_task: bool = False) -> dict[str, Any]:
    """The train stage here, or (`gpu_task`) as one Dask task on a worker with a GPU."""
    from .train import train_layer
    if not gpu_task:
        return train_layer(store, layer, cfg)
    if client is None:
        raise InputError("--gpu-task: needs a cluster (--scheduler ADDRESS or --workers N)")
    return cluster.run_on_resource(client, _train_task, str(Path(store).resolve()), layer, cfg)


def _train_task(store: str, layer: int, cfg: TrainConfig) -> dict[str, Any]:
    from .train import train_layer
    cluster.set_torch_threads()
    return train_layer(store, layer, cfg)


def main_layer(args: argparse.Namespace) -> int:
    from .embed import DEFAULT_MAX_EDGES, embed_layer
    from .train import config_from_args
    cfg = config_from_args(args)
    with cluster.dask_client(args.workers, args.scheduler, gpu=bool(args.gpu_task),
                             preload=WORKER_MODULES) as client:
        run_train(args.store, args.layer, cfg, client, bool(args.gpu_task))
        embed_layer(args.store, args.layer, max_edges=args.max_edges or DEFAULT_MAX_EDGES,
                    device=cfg.device, client=client)
    return 0


# ------------------------------------------------------------------ run
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline TOML file (see pipelines/)")
    p.add_argument("--store", help="override the config's store path")
    p.add_argument("--num-layers", type=int, help="override the config's num_layers")
    cluster.add_dask_options(p, gpu=True)


def _preprocess_argv(table: dict[str, Any], synth_out: Path | None, out: Path) -> list[str]:
    """The `preprocess` command line a [preprocess] table (plus [synth] outputs) stands for."""
    t = dict(table)
    if synth_out is not None:
        t.setdefault("edges", str(synth_out / "edges"))
        t.setdefault("features", str(synth_out / "features.npy"))
        t.setdefault("labels", str(synth_out / "labels.npy"))
        t.setdefault("undirected", True)
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
    from . import synth
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


def run_pipeline(path: str | Path, store_override: str | None = None,
                 layers_override: int | None = None,
                 dask: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`dask`: workers / scheduler / gpu_task from the command line (over the [dask] table)."""
    source = str(path)
    doc = cfgmod.check_keys(cfgmod.load_toml(path), PIPELINE_KEYS, source)
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
    from .cli import main as cli_main
    from .embed import DEFAULT_MAX_EDGES, embed_layer

    # inputs: synth -> preprocess, skipped when the store was built from the same inputs
    if "synth" in doc or "preprocess" in doc:
        out.parent.mkdir(parents=True, exist_ok=True)
        synth_out = _run_synth(doc["synth"], source) if "synth" in doc else None
        argv = _preprocess_argv(doc.get("preprocess", {}), synth_out, out)
        inp = {"argv": argv[3:], "synth": config_hash(doc.get("synth", {}))}
        done = False
        if out.exists():
            try:
                done = GraphStore(out).stage_complete(INPUT_STAGE, inp)
            except InputError:
                done = False
        if done:
            print(f"preprocess: {out} already built from these inputs (skipping)")
        else:
            rc = cli_main(argv) if client is None else _preprocess_on(client, argv)
            if rc != 0:
                raise SystemExit(rc)
            GraphStore(out).mark_stage(INPUT_STAGE, inp)
    elif not out.exists():
        raise InputError(f"{source}: store {out} does not exist and the config names no inputs "
                         "([preprocess] or [synth])")

    for i, cfg in enumerate(layer_cfgs, start=1):
        run_train(out, i, cfg, client, gpu_task)
        embed_layer(out, i, max_edges=int(embed_opts.get("max_edges", DEFAULT_MAX_EDGES)),
                    device=str(embed_opts.get("device", cfg.device)), client=client)


def _preprocess_on(client: Any, argv: list[str]) -> int:
    """`preprocess ARGV` on the pipeline's Dask client (one cluster for the whole run)."""
    from .cli import build_parser
    from .preprocess import run_preprocess
    return run_preprocess(build_parser(argv).parse_args(argv), client)


def _evaluate(out: Path, n: int, eval_opts: dict[str, Any]) -> list[dict[str, Any]]:
    from .probe import format_table, run_probe_table

    layers = eval_opts.pop("layers", list(range(0, n + 1)))
    json_out = eval_opts.pop("json", None)
    if "memory_limit" in eval_opts:
        from .memory import parse_size
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


def main_run(args: argparse.Namespace) -> int:
    run_pipeline(args.config, args.store, args.num_layers,
                 {"workers": args.workers, "scheduler": args.scheduler,
                  "gpu_task": args.gpu_task})
    return 0
