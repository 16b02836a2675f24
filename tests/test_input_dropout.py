"""`--input-dropout`: training-only inverted dropout of a layer's input entries, for dense and
CSR batches alike; the frozen layer embeds without it, and 0 keeps the hash of stores trained
before the option existed."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import lrgi_ooc
from graphs import make_store
from lrgi_ooc.cli.main import build_parser, main
from lrgi_ooc.nn.model import LRGILayer, drop_input
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.store.layout import GraphStore, train_stage

TRAIN = dict(dim=16, heads=2, batch_size=64, fanout="4,3", steps=4, device="cpu")


def _x(rows: int = 40, cols: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(rows, cols, generator=g) + 0.5
    return x * (torch.rand(rows, cols, generator=g) < 0.2)       # ~20 % non-zero


def test_csr_dropout_is_dense_dropout_of_the_stored_entries():
    x = _x()
    csr = x.to_sparse_csr()
    torch.manual_seed(3)
    out = drop_input(csr, 0.25)
    assert out.layout == torch.sparse_csr
    assert torch.equal(out.crow_indices(), csr.crow_indices())
    assert torch.equal(out.col_indices(), csr.col_indices())
    torch.manual_seed(3)
    keep = torch.rand(csr.values().shape) >= 0.25
    np.testing.assert_allclose(out.values().numpy(),
                               (csr.values() * keep / 0.75).numpy(), rtol=1e-6)
    dropped = (out.values() == 0).float().mean().item()
    assert 0.1 < dropped < 0.4


def test_dense_dropout_scales_the_kept_entries():
    x = _x()
    torch.manual_seed(1)
    out = drop_input(x, 0.5)
    kept = out != 0
    assert 0 < kept.sum() < (x != 0).sum()
    np.testing.assert_allclose(out[kept].numpy(), (2 * x[kept]).numpy(), rtol=1e-6)
    assert drop_input(x, 0.0) is x


def test_training_only():
    from types import SimpleNamespace
    x = _x(12, 8)
    ei = torch.tensor([[1, 2, 3, 4, 5, 0], [0, 0, 1, 1, 2, 3]])
    tb = SimpleNamespace(x=x, conv_edge_index=ei, num_targets=4, num_seeds=2,
                         prop_src=torch.tensor([2, 3]), prop_dst=torch.tensor([0, 1]),
                         prop_weight=torch.ones(2))
    torch.manual_seed(0)
    a = LRGILayer(8, 8, heads=2, hid=2, input_dropout=0.5)
    torch.manual_seed(0)
    b = LRGILayer(8, 8, heads=2, hid=2)
    a.eval(), b.eval()
    for ua, ub in zip(a(tb), b(tb)):
        assert torch.equal(ua, ub)
    a.train(), b.train()
    assert not torch.equal(a(tb)[0], b(tb)[0])


def test_zero_keeps_the_hash_and_the_value_is_recorded():
    assert "input_dropout" not in TrainConfig().result_fields(1)
    assert TrainConfig(input_dropout=0.3).result_fields(1)["input_dropout"] == 0.3


def test_every_training_setting_reaches_the_api_and_the_flags():
    """A TrainConfig field that a flag parses but the API does not take is silently lost
    (as --input-dropout first was)."""
    fields = set(TrainConfig.__dataclass_fields__) - {"log_every"}
    flags = set(vars(build_parser(["layer", "s", "--layer", "1"]).parse_args(
        ["layer", "s", "--layer", "1"])))
    for fn in (lrgi_ooc.layer, lrgi_ooc.train_layer):
        assert fields <= set(inspect.signature(fn).parameters), fn.__name__
    assert fields <= flags


def test_a_run_records_it_and_changes_the_weights(tmp_path):
    s = make_store(tmp_path / "g.zarr", n=400, avg_deg=5, feat=16, seed=4).path
    t = make_store(tmp_path / "h.zarr", n=400, avg_deg=5, feat=16, seed=4).path
    assert main(["layer", str(s), "--layer", "1", "--input-dropout", "0.5", "--dim", "16",
                 "--heads", "2", "--batch-size", "64", "--fanout", "4,3", "--steps", "4",
                 "--device", "cpu"]) == 0
    lrgi_ooc.layer(t, layer=1, **TRAIN)
    assert GraphStore(s).stage_record(train_stage(1))["config"]["input_dropout"] == 0.5
    assert "input_dropout" not in GraphStore(t).stage_record(train_stage(1))["config"]
    a, b = GraphStore(s).table(1)[:], GraphStore(t).table(1)[:]
    assert a.shape == b.shape and not np.array_equal(a, b)


@pytest.mark.parametrize("value", ["1", "-0.1", "x"])
def test_bad_values_are_one_line_errors(tmp_path, capsys, value):
    s = make_store(tmp_path / "b.zarr", n=100, avg_deg=4, feat=8, seed=1).path
    argv = ["layer", str(s), "--layer", "1", f"--input-dropout={value}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--input-dropout" in err and "Traceback" not in err


def test_train_e2e_refuses_it(tmp_path, capsys):
    s = make_store(tmp_path / "e.zarr", n=200, avg_deg=4, feat=8, seed=1).path
    assert main(["train-e2e", str(s), "--num-layers", "2", "--input-dropout", "0.2"]) == 2
    assert "--input-dropout" in capsys.readouterr().err


def test_train_e2e_refuses_it_from_a_config_file(tmp_path, capsys):
    s = make_store(tmp_path / "c.zarr", n=200, avg_deg=4, feat=8, seed=1).path
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\ninput_dropout = 0.2\n")
    assert main(["train-e2e", str(s), "--num-layers", "2", "--config", str(cfg)]) == 2
    assert "input_dropout" in capsys.readouterr().err
