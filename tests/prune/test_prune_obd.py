from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

from deepshrink.core import ConfigError, get_mask, set_mask
from deepshrink.prune import OBDPrune, hessian_diagonal, prune_, saliency

from .prune_helpers import TinyCNN, TinyMLP


def _autograd_diag(model: nn.Module, data: TensorDataset, param: str) -> torch.Tensor:
    x, y = data.tensors
    params = dict(model.named_parameters())
    base = {k: v.detach() for k, v in params.items()}

    def loss(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, {**base, param: w}, (x,)), y)

    w = base[param]
    full = torch.autograd.functional.hessian(loss, w)
    return full.reshape(w.numel(), w.numel()).diagonal().reshape(w.shape)


def test_exact_diagonal_matches_autograd_hessian(tiny_mlp: TinyMLP, tiny_data: TensorDataset) -> None:
    diag = hessian_diagonal(tiny_mlp, tiny_data, "exact", batch_size=16, chunk=7)  # 3 batches, ragged chunks
    for layer in ("fc1", "fc2"):
        expected = _autograd_diag(tiny_mlp, tiny_data, f"{layer}.weight")
        torch.testing.assert_close(diag[layer], expected, rtol=1e-4, atol=1e-6)


def test_exact_diagonal_on_conv_and_masked_weights(tiny_data: TensorDataset) -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(12, 1, 8, 8)
    y = torch.randint(0, 10, (12,))
    data = TensorDataset(x, y)
    set_mask(model.conv, torch.rand(4, 1, 3, 3) > 0.3)
    diag = hessian_diagonal(model, data, "exact")
    expected = _autograd_diag(model, data, "conv.parametrizations.weight.original")
    torch.testing.assert_close(diag["conv"], expected, rtol=1e-4, atol=1e-6)
    mask = get_mask(model.conv)
    assert mask is not None and torch.all(diag["conv"][~mask] == 0)


def test_gauss_newton_is_exact_for_a_linear_model(tiny_data: TensorDataset) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    gn = hessian_diagonal(model, tiny_data, "gauss-newton")
    exact = hessian_diagonal(model, tiny_data, "exact")
    torch.testing.assert_close(gn["0"], exact["0"], rtol=1e-4, atol=1e-7)


def test_gauss_newton_matches_jacobian_form(tiny_mlp: TinyMLP, tiny_data: TensorDataset) -> None:
    x, _ = tiny_data.tensors
    gn = hessian_diagonal(tiny_mlp, tiny_data, "gauss-newton")
    base = {k: v.detach() for k, v in tiny_mlp.named_parameters()}
    expected = torch.zeros_like(base["fc1.weight"])
    for xi in x:
        def f(w: torch.Tensor, xi: torch.Tensor = xi) -> torch.Tensor:
            return functional_call(tiny_mlp, {**base, "fc1.weight": w}, (xi[None],))[0]

        jac = torch.autograd.functional.jacobian(f, base["fc1.weight"]).reshape(3, -1)  # (classes, weights)
        p = torch.softmax(f(base["fc1.weight"]), 0)
        h_out = torch.diag(p) - torch.outer(p, p)
        expected += (jac.T @ h_out @ jac).diagonal().reshape(expected.shape) / len(x)
    torch.testing.assert_close(gn["fc1"], expected, rtol=1e-4, atol=1e-7)
    assert all(torch.all(v >= 0) for v in gn.values())


def test_hutchinson_converges_to_exact(tiny_mlp: TinyMLP, tiny_data: TensorDataset) -> None:
    exact = hessian_diagonal(tiny_mlp, tiny_data, "exact")
    estimate = hessian_diagonal(tiny_mlp, tiny_data, "hutchinson", probes=3000, seed=1)
    for layer in exact:
        err = (estimate[layer] - exact[layer]).norm() / exact[layer].norm()
        assert err < 0.15, (layer, float(err))


def test_obd_prunes_lowest_saliency(tiny_mlp: TinyMLP, tiny_data: TensorDataset) -> None:
    diag = hessian_diagonal(tiny_mlp, tiny_data, "exact")
    sal = saliency(diag["fc1"], tiny_mlp.fc1.weight.detach())
    report = prune_(tiny_mlp, OBDPrune(sparsity=0.4, hessian="exact"), select="fc1", data=tiny_data)
    mask = get_mask(tiny_mlp.fc1)
    assert mask is not None and report.kept == 18
    assert sal[mask].min() >= sal[~mask].max()


def test_obd_global_scope_and_needs_data(tiny_mlp: TinyMLP, tiny_data: TensorDataset) -> None:
    with pytest.raises(ConfigError, match="needs data"):
        prune_(tiny_mlp, OBDPrune(sparsity=0.5))
    report = prune_(tiny_mlp, OBDPrune(sparsity=0.5, scope="global", hessian="hutchinson", probes=8),
                    data=tiny_data)
    assert report.kept == round(0.5 * (30 + 15))


def test_obd_config_validation() -> None:
    with pytest.raises(ConfigError, match="hessian"):
        OBDPrune(hessian="newton")
    with pytest.raises(ConfigError):
        OBDPrune(sparsity=1.5)
    with pytest.raises(ConfigError, match="hessian method"):
        hessian_diagonal(nn.Linear(2, 2), [], "bfgs")


def test_fast_linear_gauss_newton_equals_vmap_path(tiny_mlp: TinyMLP, tiny_data: TensorDataset) -> None:
    from deepshrink.prune.obd import _gauss_newton_vmap, _weights

    set_mask(tiny_mlp.fc1, torch.rand(5, 6) > 0.4)
    fast = hessian_diagonal(tiny_mlp, tiny_data, "gauss-newton", batch_size=16)
    tiny_mlp.eval()
    batches = [(x, y) for x, y in torch.utils.data.DataLoader(tiny_data, batch_size=16)]
    slow = _gauss_newton_vmap(tiny_mlp, _weights(tiny_mlp, None), batches)
    for layer in ("fc1", "fc2"):
        torch.testing.assert_close(fast[layer], slow[layer], rtol=1e-4, atol=1e-7)


def test_gauss_newton_is_the_exact_diagonal_for_relu_nets() -> None:
    # with ReLU and max-pool the output is piecewise linear in each single weight: d2f/dw2 = 0, so the
    # diagonal of the Hessian has no term beyond Gauss-Newton (here via the vmap path for the conv layer)
    torch.manual_seed(0)
    model = TinyCNN()
    data = TensorDataset(torch.randn(10, 1, 8, 8), torch.randint(0, 10, (10,)))
    gn = hessian_diagonal(model, data, "gauss-newton")
    exact = hessian_diagonal(model, data, "exact")
    for layer in ("conv", "fc"):
        torch.testing.assert_close(gn[layer], exact[layer], rtol=1e-4, atol=1e-7)
