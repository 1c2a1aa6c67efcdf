"""``lowrank_``: the whole low-rank flow on a model, shared by the recipe stage, the CLI and ``compress_``.

BatchNorm is folded first (so each conv's output is the pre-ReLU response the fit reconstructs), then convs are
factorised by Zhang et al.'s response reconstruction and/or Linear layers by truncated SVD (or, with
``linear_response``, by PCA of their outputs on the calibration data).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.fold import fold_batchnorm_
from ..core.graph import run_model
from ..core.select import Selector
from ..data import calibration_batches
from .svd import SVDLinear, svd_linear_
from .zhang import ZhangLowRank, calibration_images, lowrank_conv_

__all__ = ["lowrank_"]


def _example(calib: Any) -> Any:
    if isinstance(calib, Tensor):
        return calib[:1]
    return calibration_batches(calib, 1, batch_size=1)[0]


def lowrank_(model: nn.Module, calib: Any, *, conv: ZhangLowRank | None = None, linear: SVDLinear | None = None,
             linear_response: bool = False, select: Selector = nn.Conv2d, linear_select: Selector = nn.Linear,
             seed: int = 0, images: int = 3000) -> dict[str, Any]:
    """Factorise ``model`` in place; returns a JSON-able record (folded BatchNorms, conv and Linear reports).

    ``calib``: a dataset of ``(inputs, labels)``, a tensor of inputs or a list of batches (response-fitted convs
    read images from it; ``linear_response`` runs the model on ``images`` of them).
    """
    record: dict[str, Any] = {}
    if conv is not None:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            folded = fold_batchnorm_(model, _example(calib))
            record["folded_bn"] = [list(p) for p in folded.pairs]
            record["float_bn"] = [list(p) for p in folded.kept]
        config = ZhangLowRank(**{**conv.__dict__, "seed": seed})
        record["conv"] = lowrank_conv_(model, config, calib, select).to_dict()
    if linear is not None:
        run_calib = None
        if linear_response:
            if isinstance(calib, Tensor) or hasattr(calib, "tensors"):
                chosen = calibration_images(calib, conv.images if conv else images, seed)
                batches: list[Any] = list(torch.split(chosen, 256))
            else:
                batches = calibration_batches(calib)
            device = next(model.parameters()).device

            def run_calib(m: nn.Module) -> None:
                for batch in batches:
                    run_model(m, batch.to(device) if isinstance(batch, Tensor) else batch)

        report = svd_linear_(model, linear, linear_select, calib=run_calib)
        record["linear"] = {"ranks": report.ranks, "energy": report.energy, "skipped": report.skipped,
                            "params_before": report.params_before, "params_after": report.params_after}
    return record
