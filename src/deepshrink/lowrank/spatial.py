"""The spatial half of the 3-D decomposition (Zhang et al., TPAMI): a ``k x k`` conv as ``k x 1`` then ``1 x k``.

A conv with ``d`` filters of ``c x kh x kw`` is the sum over its taps; reshaped as the matrix
``M[(i, y), (o, x)] = W[o, i, y, x]`` (``c kh`` rows, ``d kw`` columns), a rank-``s`` factorisation
``M ~= A B`` is a vertical conv (``s`` filters of ``c x kh x 1``, from ``A``) followed by a horizontal conv
(``d`` filters of ``s x 1 x kw``, from ``B``): Jaderberg et al.'s scheme 2, whose best weight approximation is
this truncated SVD (Tai et al. 2016). Given the second moment ``S`` of the input's ``c kh`` vertical columns on
calibration data, the split is fitted to the layer's *responses* instead: with ``S = L L^T`` and the columns of
different horizontal offsets taken as uncorrelated, the response error is ``||L^T (M - M_s)||^2``, minimised by
the truncated SVD of ``L^T M``, whose squared singular values are then response energies (the units of the
channel step's eigenvalues, which the rank selection weighs them against). Stride, padding and dilation split by
axis, so at full rank the pair computes the original conv exactly. The channel decomposition (:mod:`.zhang`)
then reconstructs the horizontal conv's responses asymmetrically, which also absorbs the spatial step's error.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import UnsupportedLayerError

__all__ = ["column_moments", "empty_spatial_pair", "spatial_factors", "spatial_singular_values", "spatial_supported"]


def spatial_supported(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` has a spatial extent to split (both kernel sides > 1) with zero padding."""
    kh, kw = conv.kernel_size
    return kh > 1 and kw > 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)


def _matrix(weight: Tensor) -> Tensor:
    d, c, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(c * kh, d * kw)


def _whitener(moment: Tensor | None) -> Tensor | None:
    """``L`` with ``L L^T = moment`` (ridge-regularised), or ``None`` for the weight-space split."""
    if moment is None:
        return None
    m = moment.double()
    m = m + (1e-6 * float(m.diagonal().mean()) + 1e-12) * torch.eye(m.shape[0], dtype=m.dtype)
    return torch.linalg.cholesky(m)


def spatial_singular_values(conv: nn.Conv2d, moment: Tensor | None = None) -> Tensor:
    """Squared singular values of the conv's (response-weighted) tap matrix, largest first: the energy kept per rank."""
    matrix = _matrix(conv.weight.detach().double())
    root = _whitener(moment)
    return torch.linalg.svdvals(matrix if root is None else root.T @ matrix) ** 2


def spatial_factors(conv: nn.Conv2d, rank: int, moment: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(vertical (s, c, kh, 1), horizontal (d, s, 1, kw))`` filters of the best rank-``s`` split of ``conv``."""
    weight = conv.weight.detach().double()
    d, c, kh, kw = weight.shape
    root = _whitener(moment)
    matrix = _matrix(weight)
    u, s, vh = torch.linalg.svd(matrix if root is None else root.T @ matrix, full_matrices=False)
    rank = min(rank, s.shape[0])
    scale = s[:rank].sqrt()
    a = u[:, :rank] * scale  # (c kh) x s
    if root is not None:
        a = torch.linalg.solve_triangular(root.T, a, upper=True)
    b = scale[:, None] * vh[:rank]  # s x (d kw)
    vertical = a.T.reshape(rank, c, kh, 1)
    horizontal = b.reshape(rank, d, kw).permute(1, 0, 2).reshape(d, rank, 1, kw)
    dtype = conv.weight.dtype
    return vertical.to(dtype), horizontal.to(dtype)


@torch.no_grad()
def column_moments(model: nn.Module, names: list[str], images: Tensor, positions: int = 10,
                   batch_size: int = 100, seed: int = 0) -> dict[str, Tensor]:
    """Per conv ``names``, the second moment ``E[v v^T]`` of its input's vertical ``c kh`` columns (``positions``
    random columns per image)."""
    convs = {n: cast(nn.Conv2d, model.get_submodule(n)) for n in names}
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, Tensor] = {}
    counts = dict.fromkeys(convs, 0)

    def make_hook(name: str, conv: nn.Conv2d) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            (kh, _), (sh, _), (dh, _) = conv.kernel_size, conv.stride, conv.dilation
            cols = F.unfold(args[0].double(), (kh, 1), dilation=(dh, 1), padding=(int(conv.padding[0]), 0),
                            stride=(sh, 1))  # N x (c kh) x L
            idx = torch.randint(0, cols.shape[2], (cols.shape[0], positions), generator=gen)
            picked = torch.gather(cols, 2, idx[:, None, :].expand(-1, cols.shape[1], -1))
            flat = picked.transpose(1, 2).reshape(-1, cols.shape[1])
            sums[name] = sums.get(name, 0) + flat.T @ flat
            counts[name] += flat.shape[0]
        return hook

    hooks = [conv.register_forward_pre_hook(make_hook(n, conv)) for n, conv in convs.items()]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for start in range(0, images.shape[0], batch_size):
            model(images[start:start + batch_size].to(device))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return {n: sums[n] / max(counts[n], 1) for n in sums}


def empty_spatial_pair(conv: nn.Conv2d, rank: int, out_channels: int | None = None) -> nn.Sequential:
    """``k x 1`` conv (``c -> rank``, no bias) then ``1 x k`` conv (``rank -> out_channels``, no bias)."""
    if not spatial_supported(conv):
        raise UnsupportedLayerError(f"a {conv.kernel_size} conv with padding {conv.padding!r} has no spatial split")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = (int(p) for p in conv.padding)
    device, dtype = conv.weight.device, conv.weight.dtype
    vertical = nn.Conv2d(conv.in_channels, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                         bias=False, device=device, dtype=dtype)
    horizontal = nn.Conv2d(rank, out_channels or conv.out_channels, (1, kw), stride=(1, sw), padding=(0, pw),
                           dilation=(1, dw), bias=False, device=device, dtype=dtype)
    return nn.Sequential(vertical, horizontal)
