"""The ``encode`` recipe stage: write the ``.dsz`` file (the last stage of a compression recipe)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.errors import ConfigError
from ..core.stages import RecipeContext, StageFn, register_stage
from .encode import save_compressed
from .stream import CODINGS


def _build_encode(options: Mapping[str, Any]) -> StageFn:
    """Write the ``.dsz`` file: relative sparse index (or, with ``index_coding: auto``, the context-modelled mask
    where smaller) + codebook indices, Huffman or ANS coded; ``index_bits: auto`` picks each layer's index width."""
    entropy = options.get("entropy", "huffman")
    if entropy not in CODINGS:
        raise ConfigError(f"entropy must be one of {', '.join(CODINGS)}; got {entropy!r}")
    index_bits = options.get("index_bits")
    if index_bits is not None and index_bits != "auto" and (
            not isinstance(index_bits, Mapping) or set(index_bits) - {"conv", "fc"}):
        raise ConfigError(f"index_bits must be 'auto' or a mapping with keys conv and/or fc, got {index_bits!r}")
    index_coding = options.get("index_coding", "relative")
    if index_coding not in ("relative", "auto"):
        raise ConfigError(f"index_coding must be relative (the paper's index) or auto (per layer the smaller of it "
                          f"and the context-modelled mask), got {index_coding!r}")

    def run(ctx: RecipeContext) -> dict[str, Any]:
        if ctx.out is None:
            raise ConfigError("the 'encode' stage needs an output path (--out FILE.dsz)")
        kwargs: dict[str, Any] = {"entropy": entropy, "index_coding": index_coding}
        if "index_bits" in options:
            kwargs["index_bits"] = options["index_bits"]
        ctx.encoded = save_compressed(ctx.model, ctx.out, meta=dict(ctx.meta) or None, **kwargs)
        return {"file": str(ctx.out), "bytes": ctx.out.stat().st_size}

    return run


register_stage("encode", {"entropy", "index_bits", "index_coding"}, _build_encode)
