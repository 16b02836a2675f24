"""Publishing a store: it is built in a staging directory beside its destination and moved
into place whole, so a failed or killed run never leaves a half-written store at `--out`,
and `--overwrite` never loses the old one (a killed swap is undone by `clean_stale`)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.store.layout import FORMAT_NAME, GraphStore, pid_alive


def staging_path(out: Path) -> Path:
    """Where a new store is built before `publish` moves it to `out`."""
    return out.parent / f".{out.name}.staging-{os.getpid()}"


def work_path(out: Path) -> Path:
    """Scratch directory for temporary files of a pass (bucket files), beside the output."""
    return out.parent / f".{out.name}.work-{os.getpid()}"


def clean_stale(out: Path) -> None:
    """Remove staging/backup directories left by killed runs (their pid is gone)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind_pid = p.name[len(out.name) + 2:]
        kind, _, pid = kind_pid.rpartition("-")
        if kind not in ("staging", "old", "work", "synth") or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.rename(p, out)        # killed mid-swap: the old store comes back, nothing lost
        else:
            shutil.rmtree(p, ignore_errors=True)
    runs_old = out.parent / f"{out.name}.runs"
    if runs_old.exists() and not out.exists():
        shutil.rmtree(runs_old, ignore_errors=True)


def replaceable(out: Path) -> bool:
    """What `--overwrite` may replace: an lrgi-ooc store (of any format version) or an empty
    directory; never a file or a directory holding something else."""
    if out.is_dir() and not any(out.iterdir()):
        return True
    try:
        return GraphStore(out, _check=False).meta.get("format") == FORMAT_NAME
    except (OSError, ValueError):
        return False


def publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Move a finished store into place; the old store goes only once the new one is there.
    Every writer has finished, so the partial chunk files of Dask workers killed mid-write
    (their tasks ran again) are removed first: they are not part of the store."""
    GraphStore(staging, _check=False).remove_stale_partials("", finished=True)
    old = None
    if out.exists():
        if not overwrite:
            raise InputError(f"{out}: output exists (use --overwrite to replace it)")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(staging, out)
    runs = out.parent / f"{out.name}.runs"
    if old is not None:
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
