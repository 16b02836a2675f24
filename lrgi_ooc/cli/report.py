"""`lrgi-ooc report STORE --out DIR`: flags -> `lrgi_ooc.api.report`."""
from __future__ import annotations

import argparse

from lrgi_ooc import api
from lrgi_ooc.cli.common import call


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--out", required=True,
                   help="report directory (index.html, PNG figures, report.json); an earlier "
                        "report there is replaced")


def main(args: argparse.Namespace) -> int:
    path = call(api.report, args)
    print(f"report written to {path}")
    return 0
