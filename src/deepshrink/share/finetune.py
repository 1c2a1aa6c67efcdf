"""Centroid fine-tuning (Deep Compression eq. 3): cluster indices fixed, each shared value trained with the
sum of the gradients of its weights, masks kept. Runs the common training loop (:func:`deepshrink.train.fit`).
"""

from __future__ import annotations

from torch import nn
from torch.utils.data import Dataset

from ..core.errors import ConfigError
from ..core.state import iter_states
from ..train import History, TrainConfig, fit
from ..train.loop import LossFn
from .sharing import SharedWeights, centroid_parameters

__all__ = ["finetune_centroids", "finetune_parameters"]


def finetune_parameters(model: nn.Module, train_others: bool = True) -> list[nn.Parameter]:
    """The codebooks of ``model``, plus (``train_others``) every parameter that is not a shared layer's latent.

    Biases and BatchNorm affine parameters stay float32 in the file, so training them alongside the codebooks
    is free accuracy; the latent weights under a codebook get no gradient (the codebook ignores them).
    """
    codebooks = centroid_parameters(model)
    if not codebooks:
        raise ConfigError("the model has no shared weights to fine-tune: run share_weights_ first")
    if not train_others:
        return codebooks
    frozen: set[int] = set()
    for _, module, name, chain in iter_states(model):
        if any(isinstance(step, SharedWeights) for step in chain):
            frozen.add(id(module.parametrizations[name].original))  # type: ignore[index, union-attr]
    seen = {id(p) for p in codebooks}
    others = [p for p in model.parameters() if id(p) not in frozen and id(p) not in seen and p.requires_grad]
    return codebooks + others


def finetune_centroids(
    model: nn.Module,
    train_data: Dataset,
    config: TrainConfig,
    *,
    train_others: bool = True,
    val_data: Dataset | None = None,
    quiet: bool = False,
    loss_fn: LossFn | None = None,
) -> History:
    """Fine-tune the shared values of ``model`` in place (indices and masks fixed); returns the loop's history.

    The gradient of a centroid is the sum over its cluster (eq. 3), which grows with the cluster's size: use a
    learning rate well below the one used for ordinary weights (recipes default to 1e-4 with SGD).
    ``loss_fn`` replaces cross-entropy (e.g. :class:`deepshrink.train.DistillationLoss`).
    """
    params = finetune_parameters(model, train_others)
    return fit(model, train_data, config, val_data=val_data, params=params, quiet=quiet, loss_fn=loss_fn)
