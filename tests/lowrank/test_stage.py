"""The ``lowrank`` recipe stage: validated at parse time, factorises convs and Linear layers when run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepshrink import build_model
from deepshrink.core import ConfigError
from deepshrink.recipes import RecipeContext, parse_recipe, run_recipe


def test_lowrank_stage_runs_and_validates() -> None:
    recipe = parse_recipe({"stages": [{"lowrank": {"speedup": 2, "method": "linear", "images": 30,
                                                   "decomposition": "3d"}},
                                      {"lowrank": {"linear_ratio": 0.5, "response": True}}]})
    model = build_model("vgg", in_channels=1, num_classes=10, widths=(8, 8, 16, 16))
    data = torch.utils.data.TensorDataset(torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,)))
    records = run_recipe(recipe, RecipeContext(model=model, train_data=data, val_data=data, quiet=True))
    assert records[0]["conv"]["speedup"] >= 2.0 and records[0]["folded_bn"] and records[0]["conv"]["spatial_ranks"]
    assert records[1]["linear"]["ranks"] == {"classifier": 3}
    assert isinstance(model.classifier, nn.Sequential)
    with pytest.raises(ConfigError, match="method"):
        parse_recipe({"stages": [{"lowrank": {"speedup": 2, "method": "tucker"}}]})
    with pytest.raises(ConfigError, match="speedup"):
        parse_recipe({"stages": [{"lowrank": {"method": "linear"}}]})
    with pytest.raises(ConfigError, match="decomposition"):
        parse_recipe({"stages": [{"lowrank": {"speedup": 2, "decomposition": "tucker"}}]})
