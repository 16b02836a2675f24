"""Typed, validated configuration: TOML files and CLI flags map onto the same dataclasses.

A stage is skipped only when its configuration (plus the hash of everything upstream) is
identical to the recorded one, so every field that changes a result must live here.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.memory import parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def setting(source: str, name: str) -> str:
    """How a message names a setting: `--flag` for command-line options (source "option"),
    `FILE: key` (or `FILE [table]: key`) for a config file."""
    return f"--{name.replace('_', '-')}" if source == "option" else f"{source}: {name}"


@dataclasses.dataclass
class TrainConfig:
    """One LRGI layer's training settings (defaults: docs/cli.md, tuned for graphs in general)."""
    dim: int = 512
    heads: int = 4
    fanout: tuple[int, int] = (10, 5)
    batch_size: int = 256
    epochs: typing.Optional[int] = None
    steps: typing.Optional[int] = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lambdas: tuple[float, float, float] = (25.0, 15.0, 1.0)
    hid: int = 8
    norm: str = "mean"
    residual: bool = True          # layers >= 2: the table is s (H + f(H)) (docs/cli.md)
    residual_scale: float = 2 ** -0.5   # s: 1/sqrt(2) keeps the tables at one scale
    residual_damping: float = 1.0  # layers >= 3: the output's weight against its input's
    input_dropout: float = 0.0     # training only: dropout of the layer's input entries
    warmup: float = 0.05
    seed: int = 0
    inductive: bool = False
    checkpoint_every: int = 200
    log_every: int = 10
    device: str = "auto"
    memory_limit: str = "2GB"      # the row reader's budget (its row cache); not the result
    row_reader: str = "auto"       # auto | mmap | pread: where input rows come from
    read_threads: int = 32         # pread threads (the disk's queue depth)

    def validate(self, source: str) -> "TrainConfig":
        def bad(name: str, why: str) -> InputError:
            return InputError(f"{setting(source, name)} {why}")
        for name in ("dim", "heads", "batch_size", "hid", "checkpoint_every", "log_every",
                     "read_threads"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be positive")
        if self.dim % self.heads:
            raise bad("dim", f"{self.dim} is not divisible by heads {self.heads}")
        if len(self.fanout) != 2 or min(self.fanout) <= 0:
            raise bad("fanout", "must be two positive integers k_prop,k_conv (e.g. 10,5)")
        if len(self.lambdas) != 3 or min(self.lambdas) < 0:
            raise bad("lambdas", "must be three non-negative numbers (e.g. 25,10,1)")
        if self.epochs is not None and self.epochs <= 0:
            raise bad("epochs", "must be positive")
        if self.steps is not None and self.steps <= 0:
            raise bad("steps", "must be positive")
        if not self.lr > 0:
            raise bad("lr", "must be positive")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if not 0 <= self.input_dropout < 1:
            raise bad("input_dropout", "must be a fraction in [0, 1)")
        if not 0 <= self.warmup < 1:
            raise bad("warmup", "must be a fraction in [0, 1)")
        if not self.residual_scale > 0:
            raise bad("residual_scale", "must be positive")
        if not self.residual_damping > 0:
            raise bad("residual_damping", "must be positive")
        if self.norm not in ("mean", "sym"):
            raise bad("norm", "must be 'mean' or 'sym'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise bad("device", "must be auto, cpu or cuda[:N]")
        if self.row_reader not in ("auto", "mmap", "pread"):
            raise bad("row_reader", "must be auto, mmap or pread")
        parse_size(self.memory_limit, setting(source, "memory_limit"))
        return self

    def result_fields(self, layer: int = 0) -> dict[str, Any]:
        """The fields that change layer `layer`'s weights or table (not logging or checkpoint
        cadence, nor where the input rows come from: every reader returns the same rows).
        `residual` only where it applies (layers >= 2; 0: `train-e2e`, which has none), so
        layer 1 and the paper's layer keep the hash of stores trained before it existed;
        `residual_scale` only with `residual` and when not 1, `residual_damping` only with
        `residual` from layer 3 on and when not 1, `input_dropout` only when not 0, for the
        same reason."""
        d = dataclasses.asdict(self)
        for k in ("checkpoint_every", "log_every", "device", "memory_limit", "row_reader",
                  "read_threads"):
            d.pop(k)
        if not (d["residual"] and layer >= 2) or d["residual_scale"] == 1.0:
            d.pop("residual_scale")
        if not (d["residual"] and layer >= 3) or d["residual_damping"] == 1.0:
            d.pop("residual_damping")
        if not (d["residual"] and layer >= 2):
            d.pop("residual")
        if not d["input_dropout"]:
            d.pop("input_dropout")
        return d


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, typing.get_args(tp)[0], where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise InputError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, values: dict[str, Any], source: str, base: Any = None) -> Any:
    """A dataclass instance from `values` on top of `base` (or defaults); unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        k = key.replace("-", "_")
        if k not in names:
            raise InputError(f"{source}: unknown key '{key}'")
        kwargs[k] = _coerce(value, hints[k], setting(source, key))
    obj = cls(**kwargs)
    return obj.validate(source) if hasattr(obj, "validate") else obj


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: config file not found")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{p}: not valid TOML ({e})") from None


def check_keys(table: Any, allowed: set[str], source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InputError(f"{source}: expected a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(f"{source}: unknown key '{unknown[0]}' (allowed: "
                         f"{', '.join(sorted(allowed))})")
    return table
