"""`lrgi-ooc preprocess`: flags -> `lrgi_ooc.api.preprocess`."""
from __future__ import annotations

import argparse

from lrgi_ooc import api
from lrgi_ooc.cli.common import add_dask_options, api_defaults, call

D = api_defaults(api.preprocess)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("input (exactly one of --npz, --edges, --ogb)")
    src.add_argument("--npz", help="whole dataset: edge_index, x or x_*, y, *_mask")
    src.add_argument("--edges", help="edge list: Parquet file or directory, CSV, or .npy")
    src.add_argument("--ogb", metavar="NAME", help="ogbn-* dataset from a local ogb root")
    src.add_argument("--ogb-root", metavar="DIR", help="ogb root directory (with --ogb)")
    src.add_argument("--src-col", default=D["src_col"], help="source column of --edges (default src)")
    src.add_argument("--dst-col", default=D["dst_col"], help="destination column (default dst)")
    src.add_argument("--num-nodes", help="N (default: rows of --features/--labels, else max id + 1)")
    src.add_argument("--features", help="[N, F] node features: .npy, Parquet, or CSR .npz")
    src.add_argument("--labels", help="[N] class ids or [N, C] 0/1 labels: .npy or Parquet")
    for part in ("train", "val", "test"):
        src.add_argument(f"--{part}", help=f"{part} nodes: .npy ids or boolean mask ([S, N]: S splits)")
    p.add_argument("--out", required=True, help="store directory to create")
    p.add_argument("--undirected", action="store_true", help="add the reverse of every edge")
    p.add_argument("--keep-self-loops", action="store_true", help="keep edges i -> i")
    p.add_argument("--keep-duplicates", action="store_true", help="keep repeated edges")
    p.add_argument("--feature-dtype", default=D["feature_dtype"], help="float32 (default) or float16")
    p.add_argument("--memory-limit", default=D["memory_limit"], help="memory budget (default 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    ids = p.add_argument_group("node ids (docs/cli.md, \"Node ids\")")
    ids.add_argument("--ids", default=D["ids"], metavar="auto|dense|remap",
                     help="auto (default): remap string ids and integer ids that are not "
                          "dense in [0, N); dense: ids must be in [0, N); remap: always")
    ids.add_argument("--id-col", default=D["id_col"],
                     help="id column of keyed node tables (Parquet/CSV; default id)")
    ids.add_argument("--ignore-unknown-ids", action="store_true",
                     help="skip node-table rows whose id is not in the edge list")
    add_dask_options(p)


def main(args: argparse.Namespace) -> int:
    call(api.preprocess, args)
    return 0
