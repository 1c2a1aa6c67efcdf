"""The ``deepshrink`` command: a thin typer face over the public API.

Each module in this package defines ``register(app)``; they are discovered here, so a technique adds its
commands without editing a shared file.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="deepshrink",
    help="Make trained PyTorch models small and fast: pruning, Deep Compression, fixed point, low-rank, ternary.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_ORDER = ["base"]


def _register_all() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
        if name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:
    """Console entry point; deepshrink errors print one clear line and exit 2."""
    from ..core.errors import DeepShrinkError

    try:
        app()
    except DeepShrinkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from exc
