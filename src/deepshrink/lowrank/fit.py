"""Closed-form and alternating solvers for Zhang et al.'s response reconstruction (one layer at a time).

A layer's responses ``y`` (``N x d``, pre-activation, bias included) are approximated as ``P Q^T y^ + b`` with
``P, Q`` of ``d x d'``; ``y^`` is the response of the *original* filters to the approximated network's input
(``y^ = y`` for the non-asymmetric methods). Then the layer becomes ``d'`` filters ``Q^T W`` and a 1x1 conv ``P``.

* linear (sec. 3.1): ``min sum ||y - M y - b||^2``, rank ``M <= d'``: ``M = U U^T`` with ``U`` the top-``d'``
  principal directions of ``y``.
* asymmetric linear: ``min sum ||y - M y^ - b||^2`` — reduced-rank regression, the generalised-SVD solution
  ``M = U U^T M_ols`` (``U``: top eigenvectors of the fitted responses' covariance).
* nonlinear (sec. 3.2): ``min sum ||r(y) - r(M y^ + b)||^2`` for ``r = ReLU``, relaxed with an auxiliary ``z`` and
  penalty ``lambda ||z - M y^ - b||^2``; alternate the element-wise closed-form ``z`` step and the reduced-rank
  ``M, b`` step, with the paper's schedule (lambda 0.01 for 25 iterations, then 1 for 25).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Factors:
    """``y ~= p @ qt @ y^ + b``; ``history`` holds the nonlinear objective after each iteration."""

    p: Tensor
    qt: Tensor
    b: Tensor
    error: float = 0.0
    """Mean squared reconstruction error of the fitted objective (``r(y)`` when nonlinear, ``y`` otherwise)."""
    initial_error: float = 0.0
    """The same error of the linear starting point (equal to ``error`` for linear methods)."""
    history: list[float] = field(default_factory=list)

    def apply(self, yhat: Tensor) -> Tensor:
        return (yhat.to(self.qt.dtype) @ self.qt.T) @ self.p.T + self.b

    def conv_weights(self, filters: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(Q^T filters, P, P Q^T bias + b)`` for the conv ``filters`` whose responses were fitted: the reduced
        filters, the 1x1 matrix and its bias, in the filters' dtype."""
        weight = filters.detach().double()
        bias0 = bias.detach().double() if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
        p, qt, b = self.p.double(), self.qt.double(), self.b.double()
        first = (qt @ weight.reshape(weight.shape[0], -1)).reshape(qt.shape[0], *weight.shape[1:])
        dtype = filters.dtype
        return first.to(dtype), p.to(dtype), (p @ (qt @ bias0) + b).to(dtype)


def _top_eigenvectors(cov: Tensor, rank: int) -> Tensor:
    _, vecs = torch.linalg.eigh(cov)
    return vecs[:, -rank:].flip(1)


def response_eigenvalues(y: Tensor) -> Tensor:
    """Eigenvalues of the response covariance, largest first (the paper's ``sigma`` for rank selection)."""
    yc = y.double() - y.double().mean(0)
    return torch.linalg.eigvalsh(yc.T @ yc / max(y.shape[0] - 1, 1)).flip(0).clamp_min(0)


def pca_fit(y: Tensor, rank: int) -> Factors:
    """Linear reconstruction: ``M = U U^T`` from the top-``rank`` principal directions, ``b = (I - M) mean``."""
    y = y.detach().double()
    mean = y.mean(0)
    yc = y - mean
    u = _top_eigenvectors(yc.T @ yc, rank)
    b = mean - u @ (u.T @ mean)
    fac = Factors(u, u.T.clone(), b)
    fac.error = fac.initial_error = float(((fac.apply(y) - y) ** 2).sum(1).mean())
    return fac


class _Regression:
    """Reduced-rank regression of targets on fixed inputs ``x``: ``min ||z - M x - b||``, rank ``M <= r``."""

    def __init__(self, x: Tensor, rank: int, ridge: float = 1e-6) -> None:
        self.x = x
        self.rank = rank
        self.mean = x.double().mean(0)
        xc = (x - self.mean.to(x.dtype)).double()
        gram = xc.T @ xc
        gram += (ridge * float(gram.diagonal().mean()) + 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
        self.gram = gram
        self.xc = xc.to(x.dtype)

    def fit(self, z: Tensor) -> Factors:
        zmean = z.double().mean(0)
        cross = (self.xc.T @ (z - zmean.to(z.dtype))).double()  # x^T z, d_in x d_out
        m_ols = torch.linalg.solve(self.gram, cross).T  # d_out x d_in
        u = _top_eigenvectors(m_ols @ self.gram @ m_ols.T, self.rank)  # fitted responses' principal directions
        qt = u.T @ m_ols
        return Factors(u, qt, zmean - u @ (qt @ self.mean))


def z_step(target: Tensor, v: Tensor, lam: float) -> Tensor:
    """Element-wise ``argmin_z (target - relu(z))^2 + lam (z - v)^2`` (``target = relu(y) >= 0``), in closed form."""
    z_pos = ((target + lam * v) / (1 + lam)).clamp_min(0)  # branch z >= 0: relu(z) = z
    z_neg = v.clamp_max(0)  # branch z <= 0: relu(z) = 0
    cost_pos = (target - z_pos) ** 2 + lam * (z_pos - v) ** 2
    cost_neg = target**2 + lam * (z_neg - v) ** 2
    return torch.where(cost_pos <= cost_neg, z_pos, z_neg)


def _sq_error(target: Tensor, pred: Tensor) -> float:
    return float(((target - pred) ** 2).sum(1).mean())


def nonlinear_fit(
    y: Tensor,
    yhat: Tensor,
    rank: int,
    schedule: tuple[tuple[float, int], ...] = ((0.01, 25), (1.0, 25)),
    asymmetric: bool = True,
) -> Factors:
    """Minimise ``sum ||relu(y) - relu(M yhat + b)||^2`` (rank ``M <= rank``) by the paper's alternation.

    Starts from the linear solution (PCA, or reduced-rank regression when ``asymmetric``) and returns the best
    iterate seen (the relaxed problem does not decrease the true objective monotonically).
    """
    y32, x32 = y.detach().float(), yhat.detach().float()
    target = torch.relu(y32)
    regression = _Regression(x32, rank)
    start = regression.fit(y32) if asymmetric else pca_fit(y32, rank)
    best = start
    best.initial_error = best.error = _sq_error(target, torch.relu(start.apply(x32).float()))
    current = start
    history = []
    for lam, iterations in schedule:
        for _ in range(iterations):
            current = regression.fit(z_step(target, current.apply(x32).float(), lam))
            err = _sq_error(target, torch.relu(current.apply(x32).float()))
            history.append(err)
            if err < best.error:
                current.initial_error, current.error = best.initial_error, err
                best = current
    best.history = history
    return best


def linear_fit(y: Tensor, yhat: Tensor, rank: int, asymmetric: bool) -> Factors:
    """Linear reconstruction of ``y`` from ``yhat`` (PCA when not ``asymmetric``)."""
    y, yhat = y.detach(), yhat.detach()
    if not asymmetric:
        return pca_fit(y, rank)
    fac = _Regression(yhat.float(), rank).fit(y.float())
    fac.error = fac.initial_error = _sq_error(y.double(), fac.apply(yhat))
    return fac
