"""`lrgi-ooc upgrade STORE`: flags -> `lrgi_ooc.api.upgrade`."""
from __future__ import annotations

import argparse

from lrgi_ooc import api


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory (format v1) to upgrade in place")


def main(args: argparse.Namespace) -> int:
    r = api.upgrade(args.store)
    if r["from"] == r["to"]:
        print(f"{args.store}: already format v{r['to']} (nothing to do)")
    else:
        moved = ", ".join(map(str, r["layers"])) or "none"
        print(f"{args.store}: format v{r['from']} -> v{r['to']}; weights of layers {moved} "
              "moved into the store")
    return 0
