"""`lrgi-ooc upgrade STORE`: flags -> `lrgi_ooc.api.upgrade`."""
from __future__ import annotations

import argparse
import sys

from lrgi_ooc import api


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory (format v1 or v2) to upgrade in place")


def main(args: argparse.Namespace) -> int:
    r = api.upgrade(args.store)
    if r["from"] == r["to"]:
        print(f"{args.store}: already format v{r['to']} (nothing to do)")
    else:
        moved = ", ".join(map(str, r["layers"])) or "none"
        weights = f"weights of layers {moved} moved into the store; " if r["from"] == 1 else ""
        print(f"{args.store}: format v{r['from']} -> v{r['to']}; {weights}checksums added "
              f"to {r['chunks']} chunk files")
        if r["lost"]:
            lost = ", ".join(map(str, r["lost"]))
            print(f"lrgi-ooc upgrade: warning: layers {lost} were recorded as trained but "
                  f"{args.store}.runs holds no weights for them (a copy without .runs?): "
                  "their train records are cleared and their tables kept; retrain them to "
                  "get the model back", file=sys.stderr)
    return 0
