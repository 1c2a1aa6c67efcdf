"""Options and helpers of the commands whose runs survive interruption (``compress``, ``prune``, ``ternary``).

Such a command keeps a run directory (``--workdir``, default ``OUT.run`` next to ``--out``) with a checkpoint
after every stage and every training epoch (:mod:`deepshrink.train.resume`); rerunning the same command, or adding
``--resume``, continues a stopped run and writes the same file as a run never stopped (seeded, one thread).
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from torch import nn

    from ..train.resume import RunDir

WorkdirOpt = Annotated[Path | None, typer.Option(
    "--workdir", help="Run directory: a checkpoint after every stage and training epoch, so that a stopped run "
    "continues (default: OUT.run next to --out; removed when the run completes).")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue the stopped run in the run directory (rerunning the same command does too); an "
    "error when there is nothing to resume.")]
RestartOpt = Annotated[bool, typer.Option(
    "--restart", help="Discard a stopped run in the run directory (also one of another recipe, model or options) "
    "and start again.")]

_RUN_OPTIONS = {"resume", "restart"}


def run_mode(resume: bool, restart: bool) -> str:
    """``auto``, ``resume`` or ``restart`` (see :data:`deepshrink.train.resume.MODES`)."""
    from ..core.errors import ConfigError

    if resume and restart:
        raise ConfigError("give --resume or --restart, not both")
    return "restart" if restart else "resume" if resume else "auto"


def workdir_for(out: Path, workdir: Path | None) -> Path:
    """The run directory: ``--workdir``, else ``OUT.run`` next to the output."""
    return workdir if workdir is not None else out.with_name(out.name + ".run")


def _words(param: Any, value: Any) -> list[str]:
    if getattr(param, "param_type_name", "") == "argument":
        return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    if getattr(param, "is_flag", False):
        if value:
            return [param.opts[0]]
        return [param.secondary_opts[0]] if param.secondary_opts else []
    if getattr(param, "multiple", False):
        return [w for v in value for w in (param.opts[0], str(v))]
    return [param.opts[0], str(value)]


def resume_command(ctx: Any) -> str:
    """The running command (``typer.Context``) with the options given, those that differ from their defaults, and
    ``--resume``: what continues the run."""
    if ctx is None or not hasattr(ctx, "params"):
        return "the same command with --resume"
    words = ["deepshrink", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in _RUN_OPTIONS or value is None or value == param.default or value in ((), []):
            continue
        words.extend(_words(param, value))
    return shlex.join([*words, "--resume"])


@contextlib.contextmanager
def interruptible(ctx: Any) -> Iterator[None]:
    """Ctrl-C inside a run prints where it stopped and the command that continues it, then exits with 130."""
    from ..train.resume import RunInterrupted

    try:
        yield
    except RunInterrupted as exc:
        typer.echo(f"\nstopped in {exc.where}; last checkpoint: {exc.saved} (in {exc.workdir})", err=True)
        typer.echo(f"continue with: {resume_command(ctx)}", err=True)
        raise SystemExit(130) from None


def open_run(ctx: Any, out: Path, workdir: Path | None, resume: bool, restart: bool, model: nn.Module,
             meta: dict[str, Any], options: dict[str, Any]) -> RunDir:
    """The run directory of a one-stage command, fingerprinted by its starting model and ``options``."""
    from ..train.resume import RunDir, digest, model_digest

    return RunDir.open(workdir_for(out, workdir), {"model": digest([model_digest(model), meta]), "options": options},
                       run_mode(resume, restart), resume_command(ctx))


@contextlib.contextmanager
def resumable(ctx: Any, run: RunDir | None, name: str) -> Iterator[None]:
    """Run the body as the one stage ``name`` of ``run`` (its training runs checkpointed), Ctrl-C handled."""
    with interruptible(ctx), run.active() if run is not None else contextlib.nullcontext():
        if run is not None:
            run.begin_stage(1, 1, name)
        yield
