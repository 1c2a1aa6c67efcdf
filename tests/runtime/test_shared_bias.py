"""Files whose biases are weight-shared (the shipped recipes' ``bias_bits``) run in the runtime."""

from __future__ import annotations

import torch

from deepshrink import runtime
from deepshrink.codec import save_compressed
from deepshrink.models import build_model
from deepshrink.prune import MagnitudePrune, prune_
from deepshrink.share import WeightSharing, share_weights_


def test_runtime_loads_shared_biases(tmp_path) -> None:
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=[80, 40])
    prune_(model, MagnitudePrune(sparsity=0.8))
    share_weights_(model, WeightSharing(bits=4, bias_bits=3))
    path = tmp_path / "shared-bias.dsz"
    save_compressed(model, path)
    fast = runtime.load(path)
    assert runtime.runtime_layers(fast)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5)
