"""`lrgi-ooc run CONFIG.toml`: flags -> `lrgi_ooc.api.run`."""
from __future__ import annotations

import argparse

from lrgi_ooc import api
from lrgi_ooc.cli.common import add_dask_options, call


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline TOML file (see pipelines/)")
    p.add_argument("--store", help="override the config's store path")
    p.add_argument("--num-layers", type=int, help="override the config's num_layers")
    add_dask_options(p, gpu=True)


def main(args: argparse.Namespace) -> int:
    call(api.run, args)
    return 0
