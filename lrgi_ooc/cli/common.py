"""What every command shares: Dask flags, defaults read from the API, the call into it."""
from __future__ import annotations

import argparse
import inspect
from typing import Any, Callable

from lrgi_ooc.cluster.tasks import GPU_RESOURCE


def api_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of an API function: the flags' defaults, so they cannot drift."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def call(fn: Callable[..., Any], args: argparse.Namespace, **fixed: Any) -> Any:
    """`fn` with the parsed flags that are its parameters (argparse dest = parameter name)."""
    names = inspect.signature(fn).parameters
    kw = {k: v for k, v in vars(args).items() if k in names}
    kw.update(fixed)
    return fn(**kw)


def add_dask_options(p: argparse.ArgumentParser, gpu: bool = False) -> None:
    """`--workers N` / `--scheduler ADDRESS` (and `--gpu-task` for stages that train)."""
    g = p.add_argument_group("Dask (default: run in this process)")
    g.add_argument("--workers", type=int, default=None,
                   help="start a local Dask cluster of N worker processes (1 thread each)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="use an existing Dask cluster (e.g. tcp://host:8786); its workers must "
                        "see the store at the same path")
    if gpu:
        g.add_argument("--gpu-task", action="store_true", default=None,
                       help=f"train as a Dask task on a worker advertising the resource "
                            f"{GPU_RESOURCE} (`dask worker ... --resources {GPU_RESOURCE}=1`)")
