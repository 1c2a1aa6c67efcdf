"""The C99 exporter: a compressed model -> ``model.h`` + ``model.c`` for microcontrollers (see docs/c.md).

``plan`` traces the model into ops with shapes and number formats and plans the activation arena; ``weights``
stores each weight in its compressed form (relative-index sparse rows, bit-packed codes into small tables,
int8/int16 fixed point), chosen by bytes; ``emit`` renders the kernels; ``toolchain`` builds and runs the result
with the host compiler or ``arm-none-eabi-gcc`` + QEMU (tests and benchmarks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ...core.atomic import atomic_write_text
from ...core.errors import ConfigError
from .. import register_exporter
from .emit import Emitted, emit
from .plan import Plan, plan_model
from .unroll import UNROLLS, parse_unroll

__all__ = ["Emitted", "Plan", "export_c", "plan_model"]

OPTIONS = {"layout": "weight position layouts allowed: auto (smallest), dense (every weight, as TFLite Micro "
                     "stores int8), sparse", "source": "a name for the header comments (the file exported)",
           "unroll": f"elements per iteration of the dense dot products, {'|'.join(map(str, UNROLLS))} (default 1: "
                     "plain loops; N: N independent accumulators and a remainder loop, as CMSIS-NN unrolls)"}


@register_exporter("c")
def export_c(model: nn.Module, example_inputs: Any, out: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Write ``model`` as ``out/model.h`` and ``out/model.c``; returns a JSON-able report.

    Everything is planned and rendered before a file is written, so an unsupported layer (a
    :class:`~deepshrink.core.errors.ConfigError` naming the module) leaves ``out`` untouched.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown C export option(s) {unknown} (known: {', '.join(f'{k}: {v}' for k, v in OPTIONS.items())})")
    unroll = parse_unroll(options.get("unroll", 1))
    plan = plan_model(model, example_inputs, str(options.get("layout", "auto")))
    emitted = emit(plan, str(options.get("source", "")), unroll)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; the C exporter writes a folder (model.h, model.c)")
    atomic_write_text(folder / "model.h", emitted.header)
    atomic_write_text(folder / "model.c", emitted.source)
    i, o = plan.input, plan.output
    report: dict[str, Any] = {
        "format": "c",
        "files": [str(folder / "model.h"), str(folder / "model.c")],
        "entry_point": f"int ds_infer(const {i.ctype} *in, {o.ctype} *out)",
        "arithmetic": "integer" if plan.integer else "float32",
        "input_shape": list(i.shape),
        "output_size": o.numel,
        "weight_bytes": emitted.weight_bytes,
        "arena_bytes": plan.arena_bytes,
        "unroll": unroll,
        "layers": emitted.layers,
        "folded_batchnorms": [list(p) for p in plan.folded],
    }
    if plan.integer:
        report.update(input_frac_len=i.frac, output_frac_len=o.frac)
    return report
