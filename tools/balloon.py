#!/usr/bin/env python
"""Lock GB of RAM until killed: an honest smaller machine for "larger than memory" figures.

    python tools/balloon.py GB [--ready FILE]   # lock, report, sleep until SIGTERM / SIGINT
    python tools/balloon.py GB --check          # lock, report, release and exit

Locked (mlock'd) anonymous memory cannot be swapped out or reclaimed, so the page cache and
every process share only what is left: a run beside the balloon sees a machine with
MemAvailable (printed after locking) of memory, which is the figure to state with any
measurement taken under it. GB is in binary units (1 GB = 2^30 bytes) and may be fractional
(0.0625 = 64 MB), or a size such as 512MB. Needs root or an RLIMIT_MEMLOCK of at least GB;
as root the limit is raised. Locking is done 1 GB at a time (first touch of fresh memory is
slow on some VMs: about 25 s for 15 GB here). `--ready FILE`: once locked, write
{"locked_bytes", "mem_available_bytes"} there (JSON), so a benchmark can wait for it.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import re
import resource
import signal
import sys
import time
from pathlib import Path

STEP = 1 << 30


def meminfo(field: str) -> int:
    """A /proc/meminfo field in bytes (e.g. MemAvailable)."""
    text = Path("/proc/meminfo").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    if m is None:
        raise SystemExit(f"balloon: /proc/meminfo has no {field}")
    return int(m.group(1)) * 1024


def locked_bytes() -> int:
    """This process's locked memory (VmLck of /proc/self/status)."""
    m = re.search(r"^VmLck:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def parse_amount(text: str) -> int:
    try:
        return int(float(text) * (1 << 30))
    except ValueError:
        pass
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)I?B?\s*", text.upper())
    if not m:
        raise SystemExit(f"balloon: cannot read '{text}' as GB or a size (e.g. 4, 0.5, 512MB)")
    return int(float(m.group(1)) * (1 << (10 * " KMGT".index(m.group(2) or " "))))


def allow_locking(size: int) -> None:
    """Raise RLIMIT_MEMLOCK where allowed (CAP_SYS_RESOURCE); with CAP_IPC_LOCK (root, also
    in containers without CAP_SYS_RESOURCE) mlock ignores the limit anyway."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or soft >= size:
        return
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY,
                                                     resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


def lock(size: int) -> mmap.mmap:
    """An anonymous mapping of `size` bytes, every page resident and locked."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    anchor = ctypes.c_char.from_buffer(buf)
    base = ctypes.addressof(anchor)
    del anchor                              # else the mapping cannot be closed
    t0 = time.monotonic()
    for off in range(0, size, STEP):
        n = min(STEP, size - off)
        if libc.mlock(ctypes.c_void_p(base + off), ctypes.c_size_t(n)) != 0:
            err = ctypes.get_errno()
            raise SystemExit(f"balloon: mlock failed after {off / 2**30:.2f} GB: "
                             f"{os.strerror(err)} (needs root / CAP_IPC_LOCK, or ulimit -l; "
                             f"RLIMIT_MEMLOCK is "
                             f"{resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]})")
        if size > STEP:
            print(f"balloon: {(off + n) / 2**30:.1f} / {size / 2**30:.1f} GB locked "
                  f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    return buf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("gb", help="memory to lock: GB (binary, may be fractional) or a size")
    ap.add_argument("--check", action="store_true", help="lock, report, release and exit")
    ap.add_argument("--ready", help="write the JSON report here once locked")
    args = ap.parse_args(argv)
    size = parse_amount(args.gb)
    if size <= 0:
        raise SystemExit("balloon: the amount must be positive")
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)   # delivered to sigwait below
    before = meminfo("MemAvailable")
    allow_locking(size)
    buf = lock(size)
    report = {"locked_bytes": locked_bytes(), "mem_available_bytes": meminfo("MemAvailable"),
              "mem_available_before_bytes": before, "pid": os.getpid()}
    print(f"balloon: locked {report['locked_bytes'] / 2**30:.2f} GB; MemAvailable "
          f"{report['mem_available_bytes'] / 2**30:.2f} GB (was {before / 2**30:.2f} GB)",
          flush=True)
    if args.ready:
        tmp = Path(args.ready + ".tmp")
        tmp.write_text(json.dumps(report))
        os.replace(tmp, args.ready)
    if args.check:
        buf.close()
        return 0
    signal.sigwait(signals)
    buf.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
