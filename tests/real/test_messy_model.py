"""Every technique, the ``.dsz`` round trip and the runtime on a model with control flow, a residual add, depthwise
convs, BatchNorm and a conv subclass with its own ``forward``: outputs equal the in-memory model's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import deepshrink.runtime as rt
from deepshrink.codec import load_compressed, save_compressed
from deepshrink.core import UnsupportedLayerError, compress_, fold_batchnorm_, iter_states
from deepshrink.core.graph import trace_calls
from deepshrink.fixedpoint import DynamicFixedPoint
from deepshrink.lowrank import ZhangLowRank
from deepshrink.prune import MagnitudePrune
from deepshrink.share import WeightSharing
from deepshrink.ternary import TTQ

from .messy import Messy, messy

X = torch.randn(4, 3, 15, 13, generator=torch.Generator().manual_seed(1))  # odd sizes: "same" padding is uneven
CALIB = torch.randn(24, 3, 15, 13, generator=torch.Generator().manual_seed(2))

TECHNIQUES: dict[str, Callable[[nn.Module], object]] = {
    "prune": lambda m: compress_(m, MagnitudePrune(sparsity=0.5)),
    "share": lambda m: (compress_(m, MagnitudePrune(sparsity=0.3)), compress_(m, WeightSharing(bits=4))),
    "fixedpoint": lambda m: compress_(m, DynamicFixedPoint(bits=8), calib=CALIB),
    "ternary": lambda m: compress_(m, TTQ(t=0.05, keep_first_last=False)),
    "lowrank": lambda m: compress_(m, ZhangLowRank(ranks={"head": 4}, method="asymmetric", images=24,
                                                   schedule=((0.01, 2), (1.0, 2))), calib=CALIB),
}


def test_structure_is_found_by_running_the_model_despite_control_flow() -> None:
    model = messy()
    with pytest.raises(Exception, match="control flow"):
        torch.fx.symbolic_trace(model)
    graph = trace_calls(model, X[:1])
    assert graph.order() == ["stem", "bn0", "dw", "bn1", "pw", "bn2", "head", "fc"]
    reference = model(X)
    report = fold_batchnorm_(model, X[:1])
    assert report.pairs == [("stem", "bn0"), ("dw", "bn1"), ("pw", "bn2")]  # the Conv2dSame folds too: linear in W
    torch.testing.assert_close(model(X), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_every_technique_round_trips_and_runs(technique: str, tmp_path: Path) -> None:
    model = messy()
    TECHNIQUES[technique](model)
    with torch.no_grad():
        expected = model(X)
    path = tmp_path / f"{technique}.dsz"
    save_compressed(model, path)
    loaded = load_compressed(path, model=Messy()).eval()
    for fqn, module, name, _ in iter_states(model):
        assert torch.equal(getattr(loaded.get_submodule(fqn), name), getattr(module, name)), fqn
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, rtol=0, atol=0)
        exact = technique == "fixedpoint"  # the integer layers are bit-exact with the simulation
        tol = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 1e-4, "atol": 1e-5}
        fast = rt.from_model(model)
        torch.testing.assert_close(fast(X), expected, **tol)
        from_file = rt.load(path, model=Messy())
        torch.testing.assert_close(from_file(X), expected, **tol)
    if technique in ("prune", "share", "ternary"):  # the conv subclass keeps its own forward, fed its weight
        assert "stem" in fast.runtime_report.kept and "stem" in from_file.runtime_report.kept
        assert "forward of its own" in fast.runtime_report.kept["stem"]


def test_integer_engine_names_what_blocks_the_graph_and_swaps_layers_instead() -> None:
    model = messy()
    TECHNIQUES["fixedpoint"](model)
    with pytest.raises(UnsupportedLayerError, match="swap_integer_layers_"):
        rt.IntegerModel(model)
    import copy

    engine = rt.swap_integer_layers_(copy.deepcopy(model))
    assert isinstance(engine.stem, rt.IntegerLayer)  # the Conv2dSame computes on integers through its own forward
    with torch.no_grad():
        assert torch.equal(engine(X), model(X))


def test_lowrank_leaves_a_layer_with_its_own_forward_alone() -> None:
    from deepshrink.lowrank import lowrank_conv_

    model = messy()
    fold_batchnorm_(model, X[:1])
    report = lowrank_conv_(model, ZhangLowRank(speedup=1.3, method="linear", images=24), CALIB)
    assert "forward of its own" in report.skipped["stem"]
