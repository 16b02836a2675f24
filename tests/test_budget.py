"""The default step budget: 10 epochs clamped to [50, 500] steps; --epochs / --steps win."""
from __future__ import annotations

import pytest

from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.train import MAX_STEPS, MIN_STEPS, total_steps


@pytest.mark.parametrize("per_epoch,steps", [(1, 50), (4, 50), (11, 110), (30, 300),
                                             (46, 460), (72, 500), (10 ** 6, 500)])
def test_default_budget(per_epoch, steps):
    assert (MIN_STEPS, MAX_STEPS) == (50, 500)
    assert total_steps(TrainConfig(), per_epoch) == steps


def test_explicit_budgets_are_not_clamped():
    assert total_steps(TrainConfig(epochs=30), 72) == 2160
    assert total_steps(TrainConfig(steps=7), 72) == 7
    assert total_steps(TrainConfig(epochs=1), 4) == 4
