"""A factorised model composes with pruning and round-trips through the ``.dsz`` container exactly."""

from __future__ import annotations

import torch

from deepshrink import build_model, fold_batchnorm_
from deepshrink.codec import load_compressed, save_compressed
from deepshrink.core import get_mask
from deepshrink.lowrank import SVDLinear, ZhangLowRank, lowrank_conv_, svd_linear_
from deepshrink.prune import MagnitudePrune, prune_


def test_lowrank_then_prune_then_dsz_round_trip(tmp_path) -> None:
    model = build_model("vgg", in_channels=1, num_classes=10, widths=(8, 8, 16, 16))
    model.eval()
    x = torch.randn(20, 1, 8, 8)
    fold_batchnorm_(model, x[:1])
    report = lowrank_conv_(model, ZhangLowRank(speedup=2, method="linear", images=20), x)
    svd_linear_(model, SVDLinear(rank=3))
    prune_(model, MagnitudePrune(sparsity=0.5))
    factorised = next(n for n, r in report.ranks.items() if r is not None)
    mask = get_mask(model.get_submodule(f"{factorised}.0"))
    assert mask is not None and 0.3 < float(mask.float().mean()) < 0.7
    with torch.no_grad():
        ref = model(x)
    path = tmp_path / "m.dsz"
    save_compressed(model, path)
    back = load_compressed(path)
    back.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), ref)
