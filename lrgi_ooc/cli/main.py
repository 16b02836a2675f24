"""Command-line entry point: `lrgi-ooc <command> ...` (docs/cli.md).

Each command's flags live in a module of this package exposing `add_<command>_arguments`
(or `add_arguments`) and `main_<command>(args)` (or `main`), which calls `lrgi_ooc.api`;
modules are imported only when their command runs, so `preprocess` never loads torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from lrgi_ooc.base.errors import InputError, disk_full, is_disk_full

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("lrgi_ooc.cli.preprocess", "turn edge lists / features / labels / splits into a store"),
    "info": ("lrgi_ooc.cli.inspect", "print counts, dtypes, degree statistics and completed stages"),
    "validate": ("lrgi_ooc.cli.inspect", "check a store's invariants (streamed, bounded memory)"),
    "train": ("lrgi_ooc.cli.train", "train one LRGI layer on the table of the previous layer"),
    "train-e2e": ("lrgi_ooc.cli.train", "baseline: train L layers jointly (small graphs), embed all"),
    "embed": ("lrgi_ooc.cli.embed", "write one layer's output for every node into the store"),
    "layer": ("lrgi_ooc.cli.train", "train, then embed, one layer"),
    "run": ("lrgi_ooc.cli.run", "run a whole pipeline from a TOML config, resuming"),
    "evaluate": ("lrgi_ooc.cli.evaluate", "linear-probe evaluation of a layer's embeddings"),
    "synth": ("lrgi_ooc.cli.synth", "generate a synthetic graph (DC-CSBM) of any size"),
    "export": ("lrgi_ooc.cli.export", "write a layer's embeddings to Parquet, .npy or CSV"),
    "encode": ("lrgi_ooc.cli.encode", "apply one store's trained layers to another graph"),
    "upgrade": ("lrgi_ooc.cli.upgrade", "bring a format v1/v2 store to v3 (weights, checksums)"),
    "report": ("lrgi_ooc.cli.report", "write an HTML report with figures of a store's training"),
}


class UsageError(Exception):
    """A command line that argparse refuses (bad choice, missing argument, bad number)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gets one line, `lrgi-ooc CMD: error: MSG` (exit 2),
    like every other bad input, instead of the usage block; `--help` prints the full help.
    Subcommand parsers are of this class too (argparse makes them `type(parent)`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = Parser(
        prog="lrgi-ooc", description="Out-of-core layer-wise self-supervised node embeddings.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:  # only the chosen command's module is imported
            m = importlib.import_module(mod)
            verb = name.replace("-", "_")
            getattr(m, f"add_{verb}_arguments", getattr(m, "add_arguments", None))(p)
            p.set_defaults(_entry=getattr(m, f"main_{verb}", getattr(m, "main", None)))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as e:          # named by its command, even when the top parser found it
        wanted = next((a for a in argv if not a.startswith("-")), None)
        prog = f"lrgi-ooc {wanted}" if wanted in COMMANDS else "lrgi-ooc"
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        return int(args._entry(args) or 0)
    except InputError as e:
        print(f"lrgi-ooc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                  # a full disk that no write site named
        if not is_disk_full(e):
            raise
        where = getattr(args, "out", None) or getattr(args, "store", None)
        print(f"lrgi-ooc {args.command}: error: {disk_full(e, where)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lrgi-ooc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
