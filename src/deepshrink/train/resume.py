"""Resumable runs: a run directory of atomic checkpoints from which a stopped run continues, bit for bit.

A long run (a recipe, ``prune --rounds``, ``ternary``) opens a :class:`RunDir` and makes it active; then

* after every finished stage but the last, ``stage.pt``: the model with its compression state (the ordinary
  checkpoint format), the stage records, the RNG states (torch, numpy, python) and the modules' training flags;
* every :func:`~deepshrink.train.fit` in the running stage takes the next training slot and, after each epoch,
  writes ``fit-SS-NNN.pt``: the model's tensors, the optimizer, the data order (the loader's generator), the
  RNG states and the history so far. (The learning rate is a function of the epoch: there is no scheduler
  object to keep.)

Resuming rebuilds the model the run started from, loads ``stage.pt`` and runs the interrupted stage again from
its start: a training run that had finished loads its end state instead of training, the one that was stopped
continues after its last finished epoch. The code between training runs (a pruning round, say) sees the same
weights and random states as the first time, so a seeded run on one thread writes the same bytes as one that
was never stopped. ``run.json`` holds the run's fingerprint (recipe, starting model, options): a run directory
of another fingerprint is refused with a :class:`ConfigError` unless the run is restarted.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.atomic import atomic_write_text
from ..core.edits import recorded_edits
from ..core.errors import ConfigError, FormatError
from ..core.state import compression_spec
from ..models.registry import arch_of
from .checkpoint import load_into, read_checkpoint, save_checkpoint
from .distributed import is_main_process

__all__ = ["MODES", "FitCheckpoint", "RunDir", "RunInterrupted", "active_run", "digest", "fit_checkpoint",
           "model_digest", "rng_state", "set_rng_state"]

RUN_FORMAT = "deepshrink-run"
RUN_VERSION = 1
MODES = ("auto", "resume", "restart")
"""``auto``: continue a run of the same fingerprint if there is one; ``resume``: insist on continuing one;
``restart``: discard what the run directory holds and start again."""
_FIT_FILE = re.compile(r"fit-(\d+)-(\d+)\.pt")
_ACTIVE: contextvars.ContextVar[RunDir | None] = contextvars.ContextVar("deepshrink_run", default=None)


def digest(value: Any) -> str:
    """SHA-256 of ``value``'s canonical JSON (keys sorted; other objects by ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's architecture record, edits, compression state and every tensor's bytes."""
    h = hashlib.sha256(json.dumps([arch_of(model), recorded_edits(model), compression_spec(model)],
                                  sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU and CUDA), numpy and python, as tensors and numbers."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, py_gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.asarray(keys, np.int64)),
                             "numpy_pos": int(pos), "numpy_gauss": [int(has_gauss), float(gauss)],
                             "python": torch.tensor(words, dtype=torch.int64), "python_version": int(version),
                             "python_gauss": py_gauss}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _training_flags(model: nn.Module) -> torch.Tensor:
    return torch.tensor([m.training for m in model.modules()], dtype=torch.bool)


def _set_training_flags(model: nn.Module, flags: torch.Tensor) -> None:
    modules = list(model.modules())
    if len(modules) == flags.numel():
        for module, flag in zip(modules, flags.tolist(), strict=True):
            module.training = bool(flag)


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (numpy scalars become numbers), so ``weights_only`` loading reads it back."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C inside an active run: says where it stopped and what the run directory holds."""

    def __init__(self, where: str, saved: str, workdir: Path) -> None:
        super().__init__(f"stopped in {where}; last checkpoint: {saved}")
        self.where, self.saved, self.workdir = where, saved, workdir


class FitCheckpoint:
    """The per-epoch checkpoint of one training run: ``fit``'s own ``checkpoint=`` file or a run's slot."""

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None, run: RunDir | None = None,
                 label: str = "") -> None:
        self.path, self.meta, self.run, self.label = Path(path), meta, run, label

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator | None,
                epochs: int, quiet: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """Load the state after the last finished epoch; returns ``(next epoch, history so far)``."""
        if self.run is not None:
            self.run.note_epoch(self.label, 0, epochs, saved=False)
        if not self.path.is_file():
            return 0, []
        payload = read_checkpoint(self.path)
        state = payload.get("train_state")
        if not isinstance(state, dict):
            return 0, []
        if self.run is not None and (state.get("run") != self.run.key or state.get("epochs") != epochs):
            raise ConfigError(f"{self.path} belongs to another run; rerun with --restart to start again")
        try:
            model.load_state_dict(payload["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            if generator is not None and isinstance(state.get("loader"), torch.Tensor):
                generator.set_state(state["loader"])
            if "rng" in state:
                set_rng_state(state["rng"])
            start = int(state["epoch"]) + 1
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise FormatError(f"{self.path}: cannot resume this training run from it ({type(exc).__name__}: {exc}); "
                              "rerun with --restart to start again") from exc
        if isinstance(state.get("training"), torch.Tensor):
            _set_training_flags(model, state["training"])
        history = list(state.get("history", []))
        if self.run is not None:
            self.run.note_epoch(self.label, start, epochs, saved=True)
        if not quiet and is_main_process():
            what = f"{self.run.stage_label}, {self.label}" if self.run is not None else str(self.path)
            print(f"{what}: finished before, state loaded" if start >= epochs else
                  f"resuming {what} at epoch {start + 1}/{epochs}")
        return start, history

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator | None,
             epoch: int, epochs: int, history: list[dict[str, Any]]) -> None:
        """Write the state after epoch ``epoch`` (0-based) atomically."""
        if is_main_process():
            state: dict[str, Any] = {"optimizer": optimizer.state_dict(), "epoch": epoch, "epochs": epochs,
                                     "history": _plain(history), "rng": rng_state(),
                                     "training": _training_flags(model)}
            if generator is not None:
                state["loader"] = generator.get_state()
            if self.run is not None:
                state["run"] = self.run.key
            save_checkpoint(self.path, model, meta=self.meta, train_state=state)
        if self.run is not None:
            self.run.note_epoch(self.label, epoch + 1, epochs, saved=True)


class RunDir:
    """A run directory: ``run.json`` (fingerprint), ``stage.pt`` and the running stage's ``fit-SS-NNN.pt``."""

    def __init__(self, path: str | Path, fingerprint: Mapping[str, Any], command: str = "") -> None:
        self.path = Path(path)
        self.fingerprint = _plain(dict(fingerprint))
        self.key = digest(self.fingerprint)
        self.command = command
        self.resumed = False
        self.stage, self.stage_count, self.stage_name, self._calls = 0, 0, "", 0
        self.stage_label = "the start"
        self.position, self.saved = self.stage_label, "none yet (it starts from the beginning)"

    @classmethod
    def open(cls, path: str | Path, fingerprint: Mapping[str, Any], mode: str = "auto",
             command: str = "") -> RunDir:
        """Open (or create) the run directory ``path`` for a run of ``fingerprint`` (see :data:`MODES`)."""
        if mode not in MODES:
            raise ConfigError(f"resume mode must be one of {', '.join(MODES)}, got {mode!r}")
        run = cls(path, fingerprint, command)
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError(f"{run.path} is not a directory; give another --workdir")
        try:
            info = run._read_info()
        except FormatError:
            if mode != "restart":
                raise
            info = {}  # a damaged run description: discarded below
        if info is None and run.path.is_dir() and any(not _ours(p) for p in run.path.iterdir()):
            raise ConfigError(f"{run.path} is not a deepshrink run directory (no run.json) and not empty; "
                              "give another --workdir")
        saved = info is not None and ((run.path / "stage.pt").is_file() or any(run._fit_files()))
        if mode == "restart" or (info is not None and not saved):  # nothing to lose: start afresh
            run.clear()
            info = None
        elif info is not None:
            if info.get("key") != run.key:
                raise ConfigError(f"{run.path} holds a stopped run of {run._changes(info)}; rerun with --restart "
                                  "to discard it and start again (or give another --workdir)")
            run.resumed = True
        if mode == "resume" and not run.resumed:
            raise ConfigError(f"nothing to resume in {run.path} (no checkpoint); run without --resume to start")
        if is_main_process():
            run.path.mkdir(parents=True, exist_ok=True)
            for leftover in run.path.glob(".*.tmp"):  # an atomic write stopped before its rename
                leftover.unlink(missing_ok=True)
            if info is None:
                atomic_write_text(run.path / "run.json", json.dumps(
                    {"format": RUN_FORMAT, "version": RUN_VERSION, "key": run.key, "fingerprint": run.fingerprint,
                     "command": command}, indent=1))
        return run

    def _read_info(self) -> dict[str, Any] | None:
        path = self.path / "run.json"
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"{path}: unreadable ({exc}); rerun with --restart to discard the run") from exc
        if not isinstance(info, dict) or info.get("format") != RUN_FORMAT or info.get("version") != RUN_VERSION:
            raise FormatError(f"{path}: not a deepshrink run description; rerun with --restart to discard the run")
        return info

    def _changes(self, info: dict[str, Any]) -> str:
        """What differs from the stopped run: ``another recipe``, ``options seed 0 -> 1``, ..."""
        found = info.get("fingerprint")
        old: dict[str, Any] = found if isinstance(found, dict) else {}
        words = {"recipe": "another recipe", "model": "another starting model (checkpoint or weights)"}
        changes = []
        for part in sorted(set(old) | set(self.fingerprint)):
            before, now = old.get(part), self.fingerprint.get(part)
            if before == now:
                continue
            if isinstance(before, dict) and isinstance(now, dict):
                keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
                changes.append(f"other {part} ({', '.join(f'{k} {before.get(k)!r} -> {now.get(k)!r}' for k in keys)})")
            else:
                changes.append(words.get(part, f"another {part}"))
        return ", ".join(changes) or "another configuration"

    def _fit_files(self) -> Iterator[Path]:
        return (p for p in self.path.glob("fit-*.pt") if _FIT_FILE.fullmatch(p.name))

    def clear(self) -> None:
        """Remove what this class writes (nothing else) from the run directory."""
        if not self.path.is_dir() or not is_main_process():
            return
        for item in self.path.iterdir():
            if _ours(item) and item.is_file():
                item.unlink(missing_ok=True)

    def finish(self) -> None:
        """The run completed: remove its checkpoints and the directory (when nothing else is in it)."""
        self.clear()
        if is_main_process():
            with contextlib.suppress(OSError):
                self.path.rmdir()

    # ---- stages
    def begin_stage(self, index: int, count: int, name: str) -> None:
        """Stage ``index`` (1-based) of ``count`` starts: its training runs take slots 1, 2, ...; slots of
        other stages are stale and removed."""
        self.stage, self.stage_count, self.stage_name, self._calls = index, count, name, 0
        self.stage_label = self.position = f"stage {index}/{count} ({name})" if count > 1 else name
        if is_main_process():
            for path in list(self._fit_files()):
                match = _FIT_FILE.fullmatch(path.name)
                if match is not None and int(match.group(1)) != index:
                    path.unlink(missing_ok=True)

    def save_stage(self, index: int, model: nn.Module, records: list[dict[str, Any]]) -> None:
        """Checkpoint the model after stage ``index`` with the stage records and random states."""
        if is_main_process():
            save_checkpoint(self.path / "stage.pt", model, train_state={
                "run": self.key, "stage": index, "records": _plain(records), "rng": rng_state(),
                "training": _training_flags(model)})
            for path in list(self._fit_files()):
                path.unlink(missing_ok=True)
        self.saved = f"after stage {index}/{self.stage_count} ({self.stage_name})"

    def restore_stage(self, model: nn.Module) -> tuple[int, list[dict[str, Any]]]:
        """Load ``stage.pt`` into ``model`` (fresh, as the run started); returns ``(stages done, their records)``,
        ``(0, [])`` when no stage had finished."""
        path = self.path / "stage.pt"
        if not path.is_file():
            return 0, []
        payload = read_checkpoint(path)
        state = payload.get("train_state")
        if not isinstance(state, dict) or state.get("run") != self.key:
            raise ConfigError(f"{path} belongs to another run; rerun with --restart to start again")
        try:
            load_into(model, payload, str(path))
            set_rng_state(state["rng"])
            done, records = int(state["stage"]), list(state["records"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise FormatError(f"{path}: cannot resume from it ({type(exc).__name__}: {exc}); rerun with --restart") from exc
        if isinstance(state.get("training"), torch.Tensor):
            _set_training_flags(model, state["training"])
        self.saved = f"after stage {done}"
        return done, records

    # ---- training runs
    def next_fit(self) -> FitCheckpoint:
        """The checkpoint slot of the next training run of the current stage."""
        self._calls += 1
        label = f"training run {self._calls}"
        self.note_epoch(label, 0, None, saved=False)
        return FitCheckpoint(self.path / f"fit-{self.stage:02d}-{self._calls:03d}.pt", run=self, label=label)

    def note_epoch(self, label: str, done: int, epochs: int | None, saved: bool) -> None:
        """Progress for the interruption message: ``done`` epochs of ``label`` finished (and saved)."""
        total = f"/{epochs}" if epochs is not None else ""
        if epochs is not None and done >= epochs:
            self.position = f"{self.stage_label}, after {label}"
        else:
            self.position = f"{self.stage_label}, {label}, epoch {done + 1}{total}"
        if saved and done:
            self.saved = f"after epoch {done}{total} of {label} in {self.stage_label}"

    @contextlib.contextmanager
    def active(self) -> Iterator[RunDir]:
        """Make this the run whose slots :func:`fit` uses; Ctrl-C inside becomes :class:`RunInterrupted`."""
        token = _ACTIVE.set(self)
        try:
            yield self
        except RunInterrupted:
            raise
        except KeyboardInterrupt as exc:
            raise RunInterrupted(self.position, self.saved, self.path) from exc
        finally:
            _ACTIVE.reset(token)


def _ours(path: Path) -> bool:
    """A file :class:`RunDir` writes (or the temporary of one of its atomic writes)."""
    return (path.name in ("run.json", "stage.pt") or _FIT_FILE.fullmatch(path.name) is not None
            or (path.name.startswith(".") and path.name.endswith(".tmp")))


def active_run() -> RunDir | None:
    """The run made active by :meth:`RunDir.active`, if any."""
    return _ACTIVE.get()


def fit_checkpoint(path: str | os.PathLike[str] | None, meta: dict[str, Any] | None = None) -> FitCheckpoint | None:
    """The checkpoint a :func:`fit` call uses: its own ``path`` if given, else the active run's next slot."""
    run = _ACTIVE.get()
    slot = run.next_fit() if run is not None else None
    return FitCheckpoint(path, meta) if path is not None else slot
