"""Optimal Brain Damage (LeCun, Denker, Solla 1989): saliency ``s_k = h_kk u_k^2 / 2``, lowest pruned first.

``h_kk`` is the diagonal of the Hessian of the training loss (mean cross-entropy) with respect to each
weight, estimated three ways:

* ``"exact"``: rows of the Hessian by double back-propagation (batched Hessian-vector products with unit
  vectors); cost grows with the number of weights, so for small models only.
* ``"gauss-newton"``: the Levenberg-Marquardt / Gauss-Newton approximation of the paper, which drops the
  terms with second derivatives of the non-linearities: ``H ~ J^T H_out J``. With cross-entropy,
  ``H_out = diag(p) - p p^T = sum_c s_c s_c^T`` with ``s_c = sqrt(p_c) (e_c - p)``, so the diagonal is
  ``mean_n sum_c (J_n^T s_c)^2``: one per-sample back-propagation per class, computed exactly (no further
  diagonal approximation over units, unlike the paper's hand-derived back-propagation). Always >= 0.
* ``"hutchinson"``: ``E[z * Hz]`` over Rademacher probes ``z`` (Hessian-vector products), for large models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils.data import DataLoader, Dataset

from ..core.errors import ConfigError
from ..core.select import Selector, select_layers
from ..core.state import get_mask, get_value_transform, latent_weight
from ..data import make_loader
from .base import PerLayer, check_fraction, check_scope, frozen_copy

HESSIANS = ("exact", "gauss-newton", "hutchinson")


def iter_batches(data: Any, max_samples: int, batch_size: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
    """``(inputs, labels)`` batches from a Dataset, DataLoader or iterable of batches, up to ``max_samples``."""
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = make_loader(data, batch_size)
    seen = 0
    for inputs, labels in data:
        if seen >= max_samples:
            return
        take = min(len(labels), max_samples - seen)
        seen += take
        yield inputs[:take], labels[:take]


def _weights(model: nn.Module, select: Selector) -> dict[str, tuple[str, Tensor]]:
    """``{layer fqn: (parameter name in model.named_parameters(), latent weight)}`` of the selected layers."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for fqn, module in select_layers(model, select):
        weight = latent_weight(module)
        if id(weight) not in names:
            raise ConfigError(f"layer {fqn!r}: its weight is not a parameter of the model (frozen or shared?)")
        out[fqn] = (names[id(weight)], weight)
    return out


def _exact(model: nn.Module, weights: dict[str, tuple[str, Tensor]], batches: list[tuple[Tensor, Tensor]],
           chunk: int) -> dict[str, Tensor]:
    total = sum(len(y) for _, y in batches)
    diag = {fqn: torch.zeros_like(w) for fqn, (_, w) in weights.items()}
    for x, y in batches:
        loss = F.cross_entropy(model(x), y) * (len(y) / total)
        params = [w for _, w in weights.values()]
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for (fqn, (_, w)), g in zip(weights.items(), grads, strict=True):
            flat = g.flatten()
            out = diag[fqn].view(-1)
            for start in range(0, flat.numel(), chunk):
                stop = min(start + chunk, flat.numel())
                eye = torch.zeros(stop - start, flat.numel(), device=w.device, dtype=w.dtype)
                eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                (rows,) = torch.autograd.grad(flat, w, grad_outputs=eye, is_grads_batched=True, retain_graph=True)
                out[start:stop] += rows.reshape(stop - start, -1)[torch.arange(stop - start), torch.arange(start, stop)]
    return diag


def _gauss_newton_linear(model: nn.Module, modules: dict[str, nn.Module],
                         batches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Fast Gauss-Newton diagonal for Linear layers fed one vector per sample.

    A Linear weight's per-sample gradient is ``outer(delta, x)``, so its square is ``outer(delta^2, x^2)``
    and the sum over samples is one matrix product: ``sum_c (delta_c^2)^T x^2`` with ``delta_c`` the
    back-propagated ``s_c`` at the layer's output (the paper's ``sum_i d2E/da_i^2 x_j^2``, without
    dropping the cross terms between units). Layers that do not fit (inputs with extra dims, called
    twice) are left out of the result.
    """
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            inputs[name], outputs[name] = args[0].detach(), output
            calls[name] = calls.get(name, 0) + 1

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    sums = {n: torch.zeros_like(latent_weight(m)) for n, m in modules.items()}
    usable = set(modules)
    try:
        for x, _ in batches:
            calls.clear()
            with torch.enable_grad():
                logits = model(x)
            usable &= {n for n in modules if calls.get(n) == 1 and inputs[n].dim() == 2
                       and outputs[n].requires_grad}
            names = sorted(usable)
            if not names:
                break
            prob = torch.softmax(logits.detach(), dim=-1)
            for c in range(prob.shape[-1]):
                factor = -prob * prob[:, c:c + 1].sqrt()
                factor[:, c] += prob[:, c].sqrt()  # row n: sqrt(p_c) (e_c - p)
                deltas = torch.autograd.grad(logits, [outputs[n] for n in names], grad_outputs=factor,
                                             retain_graph=c < prob.shape[-1] - 1)
                for n, delta in zip(names, deltas, strict=True):
                    sums[n] += (delta * delta).T @ (inputs[n] * inputs[n])
    finally:
        for handle in handles:
            handle.remove()
        inputs.clear()
        outputs.clear()
    total = sum(len(y) for _, y in batches)
    out = {}
    for n in usable:
        mask = get_mask(modules[n])
        diag = sums[n] / total
        out[n] = diag * mask.to(diag.dtype) if mask is not None else diag
    return out


def _gauss_newton(model: nn.Module, weights: dict[str, tuple[str, Tensor]],
                  batches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    layers = dict(model.named_modules())
    linear = {fqn: layers[fqn] for fqn in weights
              if isinstance(layers[fqn], nn.Linear) and get_value_transform(layers[fqn]) is None}
    fast = _gauss_newton_linear(model, linear, batches) if linear else {}
    rest = {fqn: w for fqn, w in weights.items() if fqn not in fast}
    return {**fast, **(_gauss_newton_vmap(model, rest, batches) if rest else {})}


def _gauss_newton_vmap(model: nn.Module, weights: dict[str, tuple[str, Tensor]],
                       batches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Any layer type: per-sample, per-class vector-Jacobian products with ``torch.func.vmap``."""
    total = sum(len(y) for _, y in batches)
    all_params = {n: p.detach() for n, p in model.named_parameters()}
    all_params.update({n: b.detach() for n, b in model.named_buffers()})
    chosen = {pname: w.detach() for pname, w in weights.values()}
    sums = {pname: torch.zeros_like(w) for pname, w in chosen.items()}
    size = sum(w.numel() for w in chosen.values())

    def per_sample(xi: Tensor) -> dict[str, Tensor]:
        def logits(p: dict[str, Tensor]) -> Tensor:
            return functional_call(model, {**all_params, **p}, (xi.unsqueeze(0),)).squeeze(0)

        result = vjp(logits, chosen)
        out, pull = result[0], result[1]
        prob = torch.softmax(out, dim=-1)
        eye = torch.eye(prob.numel(), dtype=prob.dtype, device=prob.device)
        factors = prob.sqrt()[:, None] * (eye - prob[None, :])  # row c: sqrt(p_c) (e_c - p)
        grads = vmap(pull)(factors)[0]
        return {k: (g * g).sum(0) for k, g in grads.items()}

    for x, _ in batches:
        classes = int(model(x[:1]).shape[-1])
        step = max(1, int(4e7 // max(classes * size, 1)))  # per-chunk memory ~ step * classes * size floats
        for start in range(0, len(x), step):
            result = vmap(per_sample)(x[start:start + step])
            for k, v in result.items():
                sums[k] += v.sum(0)
    return {fqn: sums[pname] / total for fqn, (pname, _) in weights.items()}


def _hutchinson(model: nn.Module, weights: dict[str, tuple[str, Tensor]], batches: list[tuple[Tensor, Tensor]],
                probes: int, seed: int) -> dict[str, Tensor]:
    total = sum(len(y) for _, y in batches)
    generator = torch.Generator().manual_seed(seed)
    params = [w for _, w in weights.values()]
    diag = [torch.zeros_like(w) for w in params]
    for x, y in batches:
        loss = F.cross_entropy(model(x), y) * (len(y) / total)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for _ in range(probes):
            zs = [(torch.randint(0, 2, w.shape, generator=generator) * 2 - 1).to(w) for w in params]
            hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=True)
            for d, z, h in zip(diag, zs, hz, strict=True):
                d += z * h / probes
    return dict(zip(weights, diag, strict=True))


def hessian_diagonal(model: nn.Module, data: Any, method: str = "gauss-newton", select: Selector = None, *,
                     max_samples: int = 2048, batch_size: int = 256, probes: int = 32, seed: int = 0,
                     chunk: int = 256) -> dict[str, Tensor]:
    """Diagonal of the Hessian of the mean cross-entropy on ``data`` w.r.t. each selected layer's weight.

    Returns ``{layer fqn: tensor shaped like the weight}`` (w.r.t. the latent weight, so pruned positions
    read zero). The model is evaluated in eval mode (no dropout, BatchNorm running statistics).
    """
    if method not in HESSIANS:
        raise ConfigError(f"hessian method must be one of {HESSIANS}, got {method!r}")
    weights = _weights(model, select)
    if not weights:
        raise ConfigError(f"no Linear/Conv layer matched select={select!r}")
    device = next(model.parameters()).device
    batches = [(x.to(device), y.to(device)) for x, y in iter_batches(data, max_samples, batch_size)]
    if not batches:
        raise ConfigError("hessian_diagonal got no data")
    was_training = model.training
    model.eval()
    try:
        if method == "exact":
            result = _exact(model, weights, batches, chunk)
        elif method == "gauss-newton":
            result = _gauss_newton(model, weights, batches)
        else:
            result = _hutchinson(model, weights, batches, probes, seed)
    finally:
        model.train(was_training)
    return {k: v.detach() for k, v in result.items()}


@dataclass(frozen=True)
class OBDPrune:
    """Optimal Brain Damage: remove the weights of lowest saliency ``h_kk u_k^2 / 2`` up to ``sparsity``.

    ``hessian`` picks the estimator (see module docs); ``max_samples`` training samples are used for it.
    Estimates of ``h_kk`` below zero (possible off a minimum, or from Hutchinson noise) are taken in
    absolute value, since the paper's model assumes a positive diagonal.
    """

    sparsity: PerLayer = 0.5
    scope: str = "layer"
    hessian: str = "gauss-newton"
    max_samples: int = 2048
    probes: int = 32
    seed: int = 0

    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_fraction("sparsity", self.sparsity)
        check_scope(self.scope, self.sparsity, "sparsity")
        if self.hessian not in HESSIANS:
            raise ConfigError(f"hessian must be one of {HESSIANS}, got {self.hessian!r}")
        if self.max_samples < 1 or self.probes < 1:
            raise ConfigError(f"max_samples and probes must be >= 1, got {self.max_samples}, {self.probes}")
        object.__setattr__(self, "sparsity", frozen_copy(self.sparsity))

    def scores(self, model: nn.Module, layers: list[tuple[str, nn.Module]], data: Any) -> dict[str, Tensor]:
        names = {name for name, _ in layers}
        diag = hessian_diagonal(model, data, self.hessian, select=lambda m, fqn: fqn in names,
                                max_samples=self.max_samples, probes=self.probes, seed=self.seed)
        modules = dict(layers)
        return {n: saliency(h, latent_weight(modules[n]).detach()) for n, h in diag.items()}


def saliency(h_diag: Tensor, weight: Tensor) -> Tensor:
    """OBD saliency ``|h_kk| u_k^2 / 2``."""
    return h_diag.abs() * weight.pow(2) / 2


__all__ = ["HESSIANS", "OBDPrune", "hessian_diagonal", "iter_batches", "saliency"]
