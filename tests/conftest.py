"""Shared fixtures: the ../shared/datasets folder and ways to run the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

os.environ.setdefault("LRGI_OOC_QUIET", "1")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """../shared/datasets (the five .npz test graphs), or skip when it is absent."""
    if not (SHARED_DATASETS / "cora.npz").is_file():
        pytest.skip(f"{SHARED_DATASETS} not available")
    return SHARED_DATASETS


def cli_env() -> dict[str, str]:
    env = dict(os.environ, LRGI_OOC_QUIET="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli_popen(args: list[str], **kw) -> subprocess.Popen:
    """`lrgi-ooc ARGS` in a fresh interpreter (stdin closed, output captured)."""
    return subprocess.Popen([sys.executable, "-m", "lrgi_ooc", *map(str, args)], cwd=REPO,
                            env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def cli_run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrgi_ooc", *map(str, args)], cwd=REPO,
                          env=cli_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def run_cli(capsys):
    """lrgi_ooc.cli.main.main(args) in this process -> (exit code, stdout, stderr)."""
    from lrgi_ooc.cli.main import main

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err
    return run
