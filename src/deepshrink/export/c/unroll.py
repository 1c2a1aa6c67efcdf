"""The ``unroll`` option: dense dot products ``N`` elements per iteration into ``N`` independent accumulators.

As CMSIS-NN's ``arm_nn_vec_mat_mult`` kernels unroll by 4, portable C99 (no intrinsics): a Linear's row loop over
its columns, a convolution's loop over the input channels of one tap (the taps outside, so a padding check runs
once per tap, not once per channel), then a remainder loop for the last ``length % N`` and the accumulators summed
pairwise. Integer sums are exact in any order in the same accumulator type (every partial sum is bounded by the
row's ``2^(bits-1) * sum|w| + |b|`` that chose the type); float sums change order (within float32 rounding). A
layer whose inner length is below ``N`` and the sparse kernels keep the plain loop; ``N = 1`` is the plain code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...core.errors import ConfigError

UNROLLS = (1, 2, 4, 8)
"""Admissible values of the ``unroll`` option."""


def parse_unroll(value: Any) -> int:
    """The ``unroll`` option as an int of :data:`UNROLLS` (``4`` or ``"4"``); else a ConfigError naming it."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number not in UNROLLS:
        raise ConfigError(f"unroll must be one of {', '.join(map(str, UNROLLS))} (elements per iteration of the "
                          f"dense inner loops; 1: plain loops), got {value!r}")
    return number


def _total(names: list[str]) -> str:
    """The accumulators summed pairwise: ``(acc0 + acc1) + (acc2 + acc3)``."""
    while len(names) > 1:
        names = [f"({a} + {b})" if len(names) > 2 else f"{a} + {b}" for a, b in zip(names[::2], names[1::2], strict=True)]
    return names[0]


def fields(n: int, length: int, var: str, acct: str, bias: str, term: Callable[[str], str],
           indent: str) -> dict[str, str]:
    """Template fields of a dot product over ``var`` in ``[0, length)`` unrolled by ``n``: ``accs`` (declarations,
    the bias in the first), ``main`` (the unrolled loop's bound), ``lanes``, ``tail`` (remainder loop) and
    ``total``; ``term(index)`` is the C product at element ``index``; ``indent`` that of the loop."""
    zero = "0.0f" if acct == "float" else "0"
    names = [f"acc{k}" for k in range(n)]
    main = length - length % n
    inner = indent + "    "
    lanes = "".join(f"{inner}{names[k]} += {term(var if k == 0 else f'{var} + {k}u')};\n" for k in range(n))
    tail = ""
    if main < length:
        tail = (f"{indent}for (; {var} < {length}u; ++{var}) {{ /* the last {length % n} */\n"
                f"{inner}acc0 += {term(var)};\n{indent}}}\n")
    accs = ", ".join([f"acc0 = {bias}", *(f"{name} = {zero}" for name in names[1:]), "acc"])
    return {"n": str(n), "main": str(main), "accs": accs, "lanes": lanes, "tail": tail, "total": _total(names)}
