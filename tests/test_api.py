"""The public API (docs/api.md): same stores, defaults and messages as the CLI; the view."""
from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lrgi_ooc
from conftest import REPO, cli_env
from lrgi_ooc.cli.main import COMMANDS as CLI_COMMANDS
from lrgi_ooc.cli.main import build_parser
from lrgi_ooc.cli.main import main as cli_main
from lrgi_ooc.store.layout import GraphStore

COMMANDS = {   # command -> (API function, minimal argv after the command name)
    "preprocess": (lrgi_ooc.preprocess, ["--out", "o"]),
    "synth": (lrgi_ooc.synth, ["--out", "o"]),
    "train": (lrgi_ooc.train_layer, ["s", "--layer", "1"]),
    "embed": (lrgi_ooc.embed_layer, ["s", "--layer", "1"]),
    "layer": (lrgi_ooc.layer, ["s", "--layer", "1"]),
    "train-e2e": (lrgi_ooc.train_e2e, ["s", "--num-layers", "2"]),
    "evaluate": (lrgi_ooc.evaluate, ["s", "--layer", "1"]),
    "run": (lrgi_ooc.run, ["c.toml"]),
    "info": (lrgi_ooc.info, ["s"]),
    "validate": (lrgi_ooc.validate, ["s"]),
    "export": (lrgi_ooc.export, ["s", "--layer", "1", "--out", "o.parquet"]),
    "encode": (lrgi_ooc.encode, ["m", "t"]),
    "report": (lrgi_ooc.report, ["s", "--out", "r"]),
    "upgrade": (lrgi_ooc.upgrade, ["s"]),
}

CLI_ONLY = {"info": {"json"},          # text or JSON on stdout: presentation, not an option
            "train-e2e": {"layer", "residual", "residual_scale", "residual_damping",
                          "input_dropout"}}    # hidden: refused with a message naming --num-layers


@pytest.fixture
def graph_files(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    n = 700
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "e.npy", rng.integers(0, n, size=(2, 5000), dtype=np.int64))
    np.save(d / "x.npy", rng.standard_normal((n, 6)).astype(np.float32))
    np.save(d / "y.npy", rng.integers(0, 3, size=n).astype(np.int64))
    return {"edges": d / "e.npy", "features": d / "x.npy", "labels": d / "y.npy"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root) != Path("zarr.json")}


def _attrs(root: Path) -> dict:
    a = json.loads((root / "zarr.json").read_text())["attributes"]["lrgi_ooc"]
    a["provenance"].pop("command")
    a["provenance"].pop("created_at")
    for rec in a["stages"].values():
        rec.pop("completed_at")
        rec.pop("peak_rss_mb")
        rec.pop("seconds")
    return a


def test_every_command_has_its_api_function():
    for name, (fn, _) in COMMANDS.items():
        assert callable(fn) and fn.__doc__, name
    assert set(COMMANDS) == set(CLI_COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_flag_defaults_are_the_api_defaults(command):
    fn, argv = COMMANDS[command]
    args = vars(build_parser([command, *argv]).parse_args([command, *argv]))
    params = inspect.signature(fn).parameters
    shared = [k for k in args if k in params]
    cli_only = set(args) - set(shared) - {"command", "_entry"}
    assert cli_only == CLI_ONLY.get(command, set())
    for k in shared:
        default = params[k].default
        if default is inspect.Parameter.empty:  # required: given by argv
            continue
        assert args[k] == default, (command, k, args[k], default)


def test_api_and_cli_build_identical_stores(graph_files, tmp_path, capsys):
    f = graph_files
    argv = ["preprocess", "--edges", f["edges"], "--features", f["features"], "--labels",
            f["labels"], "--undirected", "--memory-limit", "1MB", "--out", tmp_path / "cli.zarr"]
    assert cli_main([str(a) for a in argv]) == 0
    rec = lrgi_ooc.preprocess(edges=f["edges"], features=str(f["features"]),
                              labels=f["labels"], undirected=True, memory_limit="1MB",
                              out=tmp_path / "api.zarr")
    a, b = tmp_path / "cli.zarr", tmp_path / "api.zarr"
    assert rec == GraphStore(b).stage_record("preprocess") and rec["peak_rss_mb"] > 0
    assert _files(a) == _files(b) and len(_files(a)) > 5
    assert _attrs(a) == _attrs(b)


def test_bad_input_raises_the_message_the_cli_prints(graph_files, tmp_path, capsys):
    with pytest.raises(lrgi_ooc.InputError) as e:
        lrgi_ooc.preprocess(edges=graph_files["edges"], npz="x.npz", out=tmp_path / "o")
    assert cli_main(["preprocess", "--edges", str(graph_files["edges"]), "--npz", "x.npz",
                     "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"lrgi-ooc preprocess: error: {e.value}"
    with pytest.raises(lrgi_ooc.InputError, match="layer 1 is not trained"):
        lrgi_ooc.preprocess(edges=graph_files["edges"], out=tmp_path / "g.zarr")
        lrgi_ooc.embed_layer(tmp_path / "g.zarr", layer=1)
    assert not (tmp_path / "o").exists()


def test_open_store_is_a_read_only_view(graph_files, tmp_path):
    out = tmp_path / "g.zarr"
    lrgi_ooc.preprocess(edges=graph_files["edges"], features=graph_files["features"],
                        labels=graph_files["labels"], out=out)
    g, s = lrgi_ooc.open_store(out), GraphStore(out)
    indptr, indices = g.csr()
    assert np.array_equal(indptr, s.indptr()) and np.array_equal(indices, s.indices())
    assert np.array_equal(g.features(), np.load(graph_files["features"]))
    assert np.array_equal(g.embeddings(0), g.features())
    assert np.array_equal(g.labels(), np.load(graph_files["labels"]))
    assert g.splits() == [] and g.layers() == [] and list(g.stages()) == ["preprocess"]
    assert (g.num_nodes, g.num_edges) == (700, int(indptr[-1]))
    for arr in (indptr, indices, g.features()):
        with pytest.raises(ValueError):
            arr[0] = 1
    with pytest.raises(lrgi_ooc.InputError, match="layer 1 table is missing"):
        g.embeddings(1)
    with pytest.raises(lrgi_ooc.InputError):
        lrgi_ooc.open_store(tmp_path / "nothing")


def test_run_takes_the_config_as_a_dict(graph_files, tmp_path):
    doc = {"store": str(tmp_path / "g.zarr"), "num_layers": 1,
           "preprocess": {"edges": str(graph_files["edges"]),
                          "features": str(graph_files["features"]),
                          "labels": str(graph_files["labels"])},
           "train": {"dim": 16, "heads": 2, "steps": 3, "device": "cpu"},
           "evaluate": {"num_splits": 1, "epochs": 5}}
    res = lrgi_ooc.run(doc)
    assert [r["layer"] for r in res] == [0, 1]
    assert lrgi_ooc.open_store(tmp_path / "g.zarr").layers() == [1]
    with pytest.raises(lrgi_ooc.InputError, match=r"config \[preprocess\]: unknown key 'edgez'"):
        lrgi_ooc.run({**doc, "preprocess": {"edgez": "x"}})
    with pytest.raises(lrgi_ooc.InputError, match=r"--edges: expected a path or name, got 5"):
        lrgi_ooc.run({**doc, "preprocess": {"edges": 5}})
    with pytest.raises(lrgi_ooc.InputError, match=r"--undirected: expected true or false"):
        lrgi_ooc.preprocess(edges=graph_files["edges"], undirected="yes", out=tmp_path / "u")


def test_docs_examples_run(tmp_path):
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2 and "lrgi_ooc.layer(" in blocks[0]
    r = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, env=cli_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    scores = [float(line.split()[1]) for line in r.stdout.splitlines() if line.endswith("%")]
    assert len(scores) == 3 and all(0 < s <= 100 for s in scores)
