"""layer_by_layer: the merged single pass and the memory-bounded per-layer passes decide from the same inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepshrink.core import capture


def _decisions(monkeypatch, budget: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    monkeypatch.setattr(capture, "MERGED_BYTES", budget)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    batches = [torch.randn(5, 6) for _ in range(3)]
    seen: dict[str, Tensor] = {}

    def decide(name: str, xs: list[Tensor], refs: list[Tensor]) -> None:
        seen[name] = torch.cat(xs)
        with torch.no_grad():  # each decision changes what the later layers receive
            layers[name].weight.mul_(0.5)

    capture.layer_by_layer(model, list(layers), layers, batches, None, decide)
    return seen, {n: m.weight.detach().clone() for n, m in layers.items()}


def test_per_layer_passes_match_the_merged_pass(monkeypatch) -> None:
    merged_inputs, merged_weights = _decisions(monkeypatch, 2**40)
    split_inputs, split_weights = _decisions(monkeypatch, 0)
    assert list(merged_inputs) == list(split_inputs) == ["0", "2", "4"]
    for name in merged_inputs:
        assert merged_inputs[name].shape == (15, merged_inputs[name].shape[1])
        torch.testing.assert_close(merged_inputs[name], split_inputs[name])
        torch.testing.assert_close(merged_weights[name], split_weights[name])


def test_merged_estimate_scales_with_the_batches() -> None:
    model = nn.Sequential(nn.Linear(4, 100))
    batches = [torch.randn(10, 4) for _ in range(3)]
    assert capture._merged_activation_bytes(model, batches) == capture.LIVE_TENSORS * 10 * 100 * 4 * 3
    assert capture._merged_activation_bytes(model, batches[:1]) == 0
