"""`lrgi-ooc export`: flags -> `lrgi_ooc.api.export`, then one summary line on stdout."""
from __future__ import annotations

import argparse

from lrgi_ooc import api
from lrgi_ooc.cli.common import api_defaults, call

D = api_defaults(api.export)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--layer", type=int, required=True,
                   help="the table to export: 0 = node features, L = layer L's embeddings")
    p.add_argument("--out", required=True,
                   help="output file; its suffix picks the format: .parquet, .npy, .csv, "
                        ".csv.gz")
    p.add_argument("--nodes", default=D["nodes"], metavar="IDS.npy",
                   help="export only these node ids (1-D integer .npy), in this order")
    p.add_argument("--dtype", choices=("float32", "float16"), default=D["dtype"],
                   help="value type written (default %(default)s; float16 values beyond "
                        "its range are an error)")
    p.add_argument("--wide", action="store_true", default=D["wide"],
                   help="Parquet: one column per dimension (dim_0 ...) instead of one "
                        "fixed-size list column `embedding`")
    p.add_argument("--overwrite", action="store_true", default=D["overwrite"],
                   help="replace an existing --out (only once the new file is complete)")
    p.add_argument("--dense-ids", action="store_true", default=D["dense_ids"],
                   help="remapped stores: also write the dense `node` column beside the "
                        "user's `id`, and read --nodes as dense ids")


def main(args: argparse.Namespace) -> int:
    res = call(api.export, args)
    rate = res["rows"] / max(res["seconds"], 1e-9)
    print(f"exported {res['rows']:,} rows x {res['dim']} ({res['dtype']}) to {res['path']} "
          f"({res['format']}, {res['bytes'] / 2**20:,.1f} MiB, {rate:,.0f} rows/s)")
    return 0
