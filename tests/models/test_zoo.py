"""The zoo's shapes match the papers, and the registry rebuilds by name."""

from __future__ import annotations

import pytest
import torch

from deepshrink.core import ConfigError, fold_batchnorm_, recorded_edits
from deepshrink.models import arch_of, build_model


@pytest.mark.parametrize(
    ("arch", "params", "shape"),
    [("lenet300", 266_610, (2, 1, 28, 28)), ("lenet5", 431_080, (2, 1, 28, 28))],
)
def test_paper_parameter_counts(arch: str, params: int, shape: tuple[int, ...]) -> None:
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(shape)).shape == (2, 10)


def test_vgg_and_resnet20_shapes() -> None:
    vgg = build_model("vgg", in_channels=1)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) >= 4
    assert vgg(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    resnet = build_model("resnet20", in_channels=3)
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert 0.26e6 < sum(p.numel() for p in resnet.parameters()) < 0.28e6


def test_registry_records_arch_and_refuses_unknowns() -> None:
    model = build_model("vgg", in_channels=1, widths=[8, 8, 16, 16])
    assert arch_of(model) == ("vgg", {"in_channels": 1, "widths": [8, 8, 16, 16]})
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("alexnet")
    with pytest.raises(ConfigError, match="takes no argument"):
        build_model("lenet5", depth=3)


def test_fold_batchnorm_preserves_outputs_and_records_edit() -> None:
    model = build_model("resnet20", in_channels=1)
    model.train()
    for _ in range(3):  # give BN non-trivial running statistics
        model(torch.randn(8, 1, 28, 28))
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    pairs = fold_batchnorm_(model, x[:1])
    assert len(pairs) == 19
    assert torch.allclose(model(x), expected, atol=1e-4)
    assert [e["op"] for e in recorded_edits(model)] == ["fold_bn"] * 19
