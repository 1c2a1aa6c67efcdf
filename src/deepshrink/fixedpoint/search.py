"""The two search stages of Qiu et al. (2016) and the static-precision baseline.

* Weight stage: per layer, the range analysis gives the largest fractional length at which no weight
  overflows; the search then tries that and finer ones (clipping the largest weights) and keeps the one with
  the smallest squared quantization error.
* Data stage: greedy, layer by layer in execution order. With every earlier layer already fixed, the layer's
  input (as the partly quantized model produces it) is captured; the input fractional length minimising the
  error of the layer's output against the float model's output is kept, then the output fractional length
  likewise. Earlier choices are never revisited.
* Static baseline: one fractional length for all weights and one for all activations, network-wide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.capture import layer_by_layer
from ..core.fixed_point import (
    MAX_FRAC_LEN,
    FixedPointFormat,
    fake_quantize,
    from_int,
    overflow_free_frac_len,
    row_frac_lens,
    to_int,
)
from ..core.graph import run_model
from .transform import fixed_point_of

Batch = Any


def output_tensors(output: Any) -> list[Tensor]:
    """Every floating tensor inside a model output (tensor, tuple/list or dict), in a stable order."""
    if isinstance(output, Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in output_tensors(output[key])]
    if isinstance(output, tuple | list):
        return [t for item in output for t in output_tensors(item)]
    return []


def weight_error(weight: Tensor, fmt: FixedPointFormat) -> float:
    w = weight.detach().double()
    return float(((from_int(to_int(w, fmt.bits, fmt.frac_len), fmt.frac_len, torch.float64) - w) ** 2).sum())


def search_weight_frac_len(weight: Tensor, bits: int, span: int) -> int:
    """Overflow-free fractional length from the range analysis, then the best of it and ``span`` finer ones."""
    start = overflow_free_frac_len(float(weight.detach().abs().max()), bits)
    return min(range(start, start + span + 1), key=lambda fl: weight_error(weight, FixedPointFormat(bits, fl)))


def search_channel_frac_lens(weight: Tensor, bits: int, span: int) -> Tensor:
    """Per output channel (row of ``weight``): the overflow-free fractional length of the row's own range, then the
    best of it and ``span`` finer ones by the row's squared error. An int64 vector."""
    rows = weight.detach().double().reshape(weight.shape[0], -1)
    start = row_frac_lens(rows, bits)
    best, best_error = start.clone(), torch.full((rows.shape[0],), float("inf"), dtype=torch.float64)
    for offset in range(span + 1):
        fl = (start + offset).clamp(max=MAX_FRAC_LEN)
        error = ((from_int(to_int(rows, bits, fl), fl, torch.float64) - rows) ** 2).sum(1)
        better = error < best_error
        best, best_error = torch.where(better, fl, best), torch.where(better, error, best_error)
    return best


def channel_weight_error(weight: Tensor, bits: int, frac_lens: Tensor) -> float:
    """Squared quantization error of ``weight`` with one fractional length per output channel."""
    w = weight.detach().double()
    return float(((from_int(to_int(w, bits, frac_lens), frac_lens, torch.float64) - w) ** 2).sum())


def search_static_weight_frac_len(weights: Sequence[tuple[Tensor, int]], span: int) -> int:
    """One fractional length for every weight tensor (``(weight, bits)`` pairs): least total error."""
    starts = [overflow_free_frac_len(float(w.detach().abs().max()), b) for w, b in weights]
    candidates = range(min(starts), max(starts) + span + 1)
    return min(candidates, key=lambda fl: sum(weight_error(w, FixedPointFormat(b, fl)) for w, b in weights))


def _sq_error(pairs: Iterable[tuple[Tensor, Tensor]]) -> float:
    return float(sum(float(((a.double() - b.double()) ** 2).sum()) for a, b in pairs))


def _max_abs(tensors: Sequence[Tensor]) -> float:
    return max((float(t.detach().abs().max()) for t in tensors if t.numel()), default=0.0)


def _argmin(candidates: Iterable[int], cost: Callable[[int], float]) -> int:
    best, best_cost = None, float("inf")
    for candidate in candidates:
        value = cost(candidate)
        if best is None or value < best_cost:
            best, best_cost = candidate, value
    assert best is not None
    return best


@torch.no_grad()
def greedy_data_stage(model: nn.Module, order: Sequence[str], modules: dict[str, nn.Module],
                      reference_out: dict[str, list[Tensor]], batches: Sequence[Batch], act_bits: int | Mapping[str, int],
                      quantize_outputs: set[str], span: int,
                      clips: Mapping[str, tuple[float, float]] | None = None,
                      unsigned: bool = False) -> dict[str, float]:
    """Choose every layer's input (and, for layers in ``quantize_outputs``, output) fractional length
    greedily in ``order`` (see module doc); returns each layer's relative output error (its output's squared
    error against the float model's, over the reference's energy) as the chosen formats leave it.

    ``act_bits``: one width, or one per layer. A layer whose input format is per token (``dynamic_input``) keeps
    that: its input needs no search. ``clips``: layers whose output only feeds a clipping activation (ReLU,
    ReLU6) with its bounds: their output format is judged after the clip (error the clip removes is no error).
    ``unsigned``: an input that is non-negative on every calibration batch, and an output clipped at a bound >= 0,
    get an unsigned format (twice the resolution over the same range); otherwise formats are signed.
    Layers that read the very same, unmodified input tensor as the layer being
    fixed (a transformer's query/key/value) cannot depend on its formats; their inputs come from the same capture pass.
    """
    for module in (modules[name] for name in order):
        fp = fixed_point_of(module)
        assert fp is not None
        fp.set_act_in(None)
        fp.set_act_out(None)
    errors: dict[str, float] = {}

    def decide(name: str, xs: list[Tensor], refs: list[Tensor]) -> None:
        bits = act_bits[name] if isinstance(act_bits, Mapping) else act_bits
        errors[name] = _choose_layer_formats(modules[name], xs, refs, bits, name in quantize_outputs, span,
                                             (clips or {}).get(name), unsigned)

    layer_by_layer(model, order, modules, batches, reference_out, decide)
    return errors


def _non_negative(tensors: Sequence[Tensor]) -> bool:
    return all(bool((t.detach() >= 0).all()) for t in tensors)


def _choose_layer_formats(module: nn.Module, xs: list[Tensor], y_ref: list[Tensor], act_bits: int,
                          quantize_outputs: bool, span: int, clip: tuple[float, float] | None = None,
                          unsigned: bool = False) -> float:
    """Set the layer's input (and output) format; returns its relative output error with them."""
    fp = fixed_point_of(module)
    assert fp is not None
    energy = sum(float((y.double() ** 2).sum()) for y in y_ref) or 1.0
    if fp.dynamic_input:  # chosen per token at run time: only the width is set here
        fp.set_act_in(FixedPointFormat(act_bits, 0))
        return _sq_error((module(x), y) for x, y in zip(xs, y_ref, strict=True)) / energy
    signed_in = not (unsigned and _non_negative(xs))
    start = overflow_free_frac_len(_max_abs(xs), act_bits, signed_in)

    def input_cost(fl: int) -> float:
        fp.set_act_in(FixedPointFormat(act_bits, fl, signed_in))
        return _sq_error((module(x), y) for x, y in zip(xs, y_ref, strict=True))

    costs: dict[int, float] = {}
    best = _argmin(range(start, start + span + 1), lambda fl: costs.setdefault(fl, input_cost(fl)))
    fp.set_act_in(FixedPointFormat(act_bits, best, signed_in))
    if not quantize_outputs:
        return costs[best] / energy
    def after(t: Tensor) -> Tensor:
        return t if clip is None else t.clamp(*clip)

    ys = [module(x) for x in xs]
    refs = [after(r) for r in y_ref]
    signed_out = not (unsigned and clip is not None and clip[0] >= 0)
    start = overflow_free_frac_len(_max_abs([after(y) for y in ys]), act_bits, signed_out)

    def output_cost(fl: int) -> float:
        return _sq_error((after(fake_quantize(y, act_bits, fl, rounding=fp.rounding, signed=signed_out)), r)
                         for y, r in zip(ys, refs, strict=True))

    out_costs: dict[int, float] = {}
    best_out = _argmin(range(start, start + span + 1), lambda fl: out_costs.setdefault(fl, output_cost(fl)))
    fp.set_act_out(FixedPointFormat(act_bits, best_out, signed_out))
    return out_costs[best_out] / energy


@torch.no_grad()
def static_data_stage(model: nn.Module, order: Sequence[str], modules: dict[str, nn.Module],
                      reference_in: dict[str, list[Tensor]], reference_out: dict[str, list[Tensor]],
                      reference_final: list[list[Tensor]], batches: Sequence[Batch], act_bits: int,
                      quantize_outputs: set[str], span: int) -> None:
    """One fractional length for every activation, chosen by the network output's error against float."""
    starts = [overflow_free_frac_len(_max_abs(reference_in[n]), act_bits) for n in order]
    starts += [overflow_free_frac_len(_max_abs(reference_out[n]), act_bits) for n in order if n in quantize_outputs]

    def set_all(fl: int) -> None:
        fmt = FixedPointFormat(act_bits, fl)
        for n in order:
            fp = fixed_point_of(modules[n])
            assert fp is not None
            fp.set_act_in(fmt)
            fp.set_act_out(fmt if n in quantize_outputs else None)

    def cost(fl: int) -> float:
        set_all(fl)
        pairs = []
        for batch, ref in zip(batches, reference_final, strict=True):
            pairs += list(zip(output_tensors(run_model(model, batch)), ref, strict=True))
        return _sq_error(pairs)

    set_all(_argmin(range(min(starts), max(starts) + span + 1), cost))
