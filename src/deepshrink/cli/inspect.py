"""``deepshrink inspect FILE.dsz``: the per-layer size table of a compressed file (Deep Compression Tables 2/3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOpt, emit_json


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)


def inspect_cmd(
    path: Annotated[Path, typer.Argument(help="A .dsz file written by save_compressed / deepshrink compress.")],
    json_out: JsonOpt = False,
) -> None:
    """Per layer: weights, % kept, weight bits and index bits (fixed width -> entropy coded), bytes, rate.

    Every size is computed from the sections actually in the file.
    """
    from ..codec.stats import file_stats, format_table

    stats = file_stats(path)
    if json_out:
        emit_json(stats)
    else:
        typer.echo(format_table(stats))
