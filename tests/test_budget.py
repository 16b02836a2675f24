"""The default step budget: 10 epochs over the seeds, or over the edges where the graph is
denser than one visit's sample (10 x edges / (batch_size x k_prop) steps), clamped to
[50, 500]; --epochs / --steps win, and the default rule is part of a layer's configuration."""
from __future__ import annotations

import pytest

from graphs import edge_index_of, make_store
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.train import (BUDGET_RULE, MAX_STEPS, MIN_STEPS, stage_config,
                                   total_steps, train_layer)
from lrgi_ooc.store.layout import train_stage


@pytest.mark.parametrize("per_epoch,steps", [(1, 50), (4, 50), (11, 110), (30, 300),
                                             (46, 460), (72, 500), (10 ** 6, 500)])
def test_default_budget_without_edges(per_epoch, steps):
    assert (MIN_STEPS, MAX_STEPS) == (50, 500)
    assert total_steps(TrainConfig(), per_epoch) == steps


# the shared graphs (batches of 256 seeds, directed edges, k_prop 10): Cora keeps its 10
# epochs, Chameleon's budget follows its edges, the others reach the cap either way
@pytest.mark.parametrize("name,per_epoch,edges,steps", [
    ("cora", 11, 10_556, 110), ("chameleon", 9, 62_742, 245),
    ("amazon_photo", 30, 238_162, 500), ("coauthor_cs", 72, 163_788, 500),
    ("tolokers", 46, 1_038_000, 500), ("dense and tiny", 1, 3_000, 50)])
def test_default_budget_over_edges(name, per_epoch, edges, steps):
    assert total_steps(TrainConfig(), per_epoch, edges) == steps


def test_edge_budget_follows_batch_size_and_k_prop():
    # 10 x 62,742 / (128 x 10) = 490; / (256 x 20) = 122 (above 10 epochs of 9 batches)
    assert total_steps(TrainConfig(batch_size=128), 18, 62_742) == 490
    assert total_steps(TrainConfig(fanout=(20, 5)), 9, 62_742) == 122


def test_explicit_budgets_are_not_clamped_nor_counted_over_edges():
    assert total_steps(TrainConfig(epochs=30), 72) == 2160
    assert total_steps(TrainConfig(steps=7), 72) == 7
    assert total_steps(TrainConfig(epochs=1), 4) == 4
    assert total_steps(TrainConfig(epochs=1), 4, 10 ** 9) == 4
    assert total_steps(TrainConfig(steps=7), 9, 62_742) == 7


def test_default_rule_is_in_the_configuration(tmp_path):
    s = make_store(tmp_path / "g.zarr", n=200, avg_deg=2, feat=4)
    assert stage_config(s, 1, TrainConfig())["budget"] == BUDGET_RULE
    assert "budget" not in stage_config(s, 1, TrainConfig(steps=100))
    assert "budget" not in stage_config(s, 1, TrainConfig(epochs=10))


def test_layer_trains_the_edge_budget(tmp_path):
    # 200 nodes, ~6,000 directed edges: 4 batches of 64 seeds (10 epochs: 40, so 50), the
    # edges ask for 10 x E / (64 x 4) steps
    s = make_store(tmp_path / "g.zarr", n=200, avg_deg=15, feat=4)
    edges = edge_index_of(s).shape[1]
    want = 10 * edges // (64 * 4)
    assert 100 < want < MAX_STEPS
    cfg = TrainConfig(dim=8, heads=1, hid=1, batch_size=64, fanout=(4, 2), log_every=1000,
                      checkpoint_every=1000)
    rec = train_layer(s.path, 1, cfg)
    assert rec["steps"] == want
    assert s.stage_record(train_stage(1))["config"]["budget"] == BUDGET_RULE
