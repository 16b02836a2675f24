"""`lrgi-ooc train`, `layer` and `train-e2e`: flags -> `lrgi_ooc.api` (one TrainConfig each)."""
from __future__ import annotations

import argparse

from lrgi_ooc import api
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.cli.common import add_dask_options, api_defaults, call
from lrgi_ooc.cli.embed import add_budget_options, add_table_dtype


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `layer`; every flag maps onto a TrainConfig field."""
    p.add_argument("store", help="store directory")
    p.add_argument("--layer", type=int, required=True, help="layer to train (1 = on features)")
    p.add_argument("--config", help="TOML file with the same keys (its [train] table or top level)")
    p.add_argument("--dim", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--fanout", help="k_prop,k_conv (default 10,5)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="step budget (instead of --epochs)")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lambdas", help="lambda1,lambda2,lambda3 (default 25,15,1; the paper: 25,10,1)")
    p.add_argument("--hid", type=int, help="predictor hidden width factor (default 8)")
    p.add_argument("--norm", choices=["mean", "sym"])
    p.add_argument("--warmup", type=float, help="warm-up fraction of the steps")
    p.add_argument("--input-dropout", type=float,
                   help="training only: drop this fraction of the input entries (default 0)")
    p.add_argument("--seed", type=int)
    p.add_argument("--inductive", action="store_true", default=None,
                   help="train on the subgraph induced by the training nodes")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="layers >= 2: the table is s (H + f(H)), f trained as the paper's layer "
                        "(default on; --no-residual: the paper's table f(H))")
    p.add_argument("--residual-scale", type=float,
                   help="a residual layer's table is s (H + f(H)) (default 1/sqrt(2) = 0.7071: "
                        "the tables keep one scale; 1: the plain sum)")
    p.add_argument("--residual-damping", type=float,
                   help="layers >= 3: the layer's output enters the table at D times its "
                        "input's weight, the table's spread kept (default 1)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--device", help="auto, cpu or cuda[:N]")


def add_row_options(p: argparse.ArgumentParser, memory_limit: bool = True) -> None:
    """Where input rows come from (`train`, `layer`; never part of the result)."""
    if memory_limit:
        p.add_argument("--memory-limit", help="memory training may use; a table larger than "
                       "it is read by pread through a row cache of what is left (default 2GB)")
    p.add_argument("--row-reader", choices=["auto", "mmap", "pread"],
                   help="input rows from the memory map or by pread from a thread pool "
                        "(default auto: the map while the table fits the budget and half "
                        "of MemAvailable)")
    p.add_argument("--read-threads", type=int, help="pread threads: the disk's queue depth "
                   "(default 32)")


def add_max_edges(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-edges", type=int, default=None,
                   help="embed: edges processed at once (bounds memory)")


# ------------------------------------------------------------------ train
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    add_train_options(p)
    add_row_options(p)
    add_dask_options(p, gpu=True)


def main_train(args: argparse.Namespace) -> int:
    call(api.train_layer, args)
    return 0


# ------------------------------------------------------------------ layer
def add_layer_arguments(p: argparse.ArgumentParser) -> None:
    add_train_options(p)
    add_max_edges(p)
    add_budget_options(p, api_defaults(api.layer))    # --memory-limit: train's and embed's
    add_table_dtype(p, api_defaults(api.layer))       # embed's (train writes no table)
    add_row_options(p, memory_limit=False)
    add_dask_options(p, gpu=True)


def main_layer(args: argparse.Namespace) -> int:
    call(api.layer, args)
    return 0


# ------------------------------------------------------------------ train-e2e
LAYERWISE_ONLY = ("residual", "residual_scale", "residual_damping", "input_dropout")


def add_train_e2e_arguments(p: argparse.ArgumentParser) -> None:
    add_train_options(p)
    hidden = {"--layer"} | {"--" + name.replace("_", "-") for name in LAYERWISE_ONLY}
    for a in p._actions:        # --layer and the layer-wise options do not apply: hide them
        if hidden & set(a.option_strings):
            a.required, a.help = False, argparse.SUPPRESS
    p.add_argument("--num-layers", type=int, required=True,
                   help="layers trained jointly (sampling [k_prop] * L + [k_conv])")
    add_max_edges(p)


def main_train_e2e(args: argparse.Namespace) -> int:
    if args.layer is not None:
        raise InputError("--layer: train-e2e trains layers 1..--num-layers jointly")
    for name in LAYERWISE_ONLY:
        if getattr(args, name) is not None:
            raise InputError(f"--{name.replace('_', '-')}: applies to layer-wise training "
                             "(`layer`, `train`)")
    call(api.train_e2e, args)
    return 0
