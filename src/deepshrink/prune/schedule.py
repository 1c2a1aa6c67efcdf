"""Iterative prune -> retrain (Han et al. 2015): rounds of rising sparsity, each followed by retraining.

Han et al. retrain at a reduced learning rate (1/10 of the original for LeNet) and found iterative pruning
reaches higher sparsity than one shot. After every round a checkpoint is written; a run pointed at an
existing checkpoint resumes after its last finished round (and inside a round, from the last epoch).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..core.errors import ConfigError, FormatError
from ..core.select import Selector, select_layers
from ..core.state import Mask, get_mask, set_mask
from ..train import TrainConfig, evaluate, fit, read_checkpoint, save_checkpoint
from ..train.loop import LossFn
from .base import PerLayer, PruneMethod, prune_
from .magnitude import MagnitudePrune, RandomPrune
from .obd import OBDPrune
from .obs import OBSPrune


def rising_sparsities(final: PerLayer, rounds: int, power: float = 1.0) -> list[PerLayer]:
    """Sparsity targets for ``rounds`` rounds rising to ``final``: ``final * (1 - (1 - r/R)^power)``.

    ``power=1`` rises evenly; ``power=3`` is the gradual schedule of Zhu & Gupta (big steps first).
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    out: list[PerLayer] = []
    for r in range(1, rounds + 1):
        f = 1.0 - (1.0 - r / rounds) ** power
        if isinstance(final, Mapping):
            out.append({k: float(v) * f for k, v in final.items()})
        else:
            out.append(float(final) * f)
    return out


PRUNE_METHODS: dict[str, type] = {"magnitude": MagnitudePrune, "obd": OBDPrune, "obs": OBSPrune, "random": RandomPrune}
"""Criteria by the name recipes and the CLI use; each is a config taking ``sparsity`` and ``scope``."""


def method_config(method: str, sparsity: PerLayer, scope: str = "layer", **options: Any) -> PruneMethod:
    """The ``method`` criterion at ``sparsity``; ``options`` it does not take (e.g. ``hessian`` for magnitude) are
    dropped, so one set of CLI options serves every method."""
    cls = PRUNE_METHODS.get(method)
    if cls is None:
        raise ConfigError(f"unknown pruning method {method!r} (known: {', '.join(PRUNE_METHODS)})")
    taken = {f.name for f in fields(cls)}
    config: PruneMethod = cls(sparsity=sparsity, scope=scope, **{k: v for k, v in options.items() if k in taken})
    return config


def rising_schedule(final: PerLayer, rounds: int, method: str = "magnitude", scope: str = "layer",
                    power: float = 1.0, **options: Any) -> list[PruneMethod]:
    """One prune config per round, sparsity rising to ``final`` (``method``: a name in :data:`PRUNE_METHODS`)."""
    return [method_config(method, s, scope, **options) for s in rising_sparsities(final, rounds, power)]


def quality_schedule(quality: PerLayer, rounds: int, scope: str = "layer") -> list[PruneMethod]:
    """Han et al.'s threshold rule over ``rounds`` rounds: quality ``q * r / R`` in round ``r``."""
    def scaled(f: float) -> PerLayer:
        return {k: float(v) * f for k, v in quality.items()} if isinstance(quality, Mapping) else float(quality) * f

    return [MagnitudePrune(quality=scaled(r / rounds), scope=scope) for r in range(1, rounds + 1)]


class DropoutAdjuster:
    """Han et al.'s dropout rule for retraining: ``D_r = D_o * sqrt(C_r / C_o)``.

    Each ``nn.Dropout`` is tied to the next prunable layer after it (the connections it drops feed that
    layer); its rate is scaled by the square root of the fraction of that layer's connections still kept.
    """

    def __init__(self, model: nn.Module) -> None:
        self.links: list[tuple[nn.Dropout, float, nn.Module]] = []
        pending: list[nn.Dropout] = []
        prunable = {id(m) for _, m in select_layers(model)}
        for _, module in model.named_modules():
            if isinstance(module, nn.Dropout):
                pending.append(module)
            elif id(module) in prunable and pending:
                self.links.extend((d, d.p, module) for d in pending)
                pending = []

    def update(self) -> None:
        for dropout, original, layer in self.links:
            mask = get_mask(layer)
            kept = float(mask.float().mean()) if mask is not None else 1.0
            dropout.p = original * kept ** 0.5


def _restore(model: nn.Module, payload: dict[str, Any]) -> None:
    """Load a round checkpoint into ``model``: narrow masks to the saved ones, then load the weights."""
    spec = payload.get("compression", {})
    state = payload["state_dict"]
    modules = dict(model.named_modules())
    for tensor_fqn, classes in spec.items():
        if classes != [Mask.__name__]:
            raise FormatError(f"round checkpoint carries {classes} on {tensor_fqn!r}; only pruning masks resume here")
        module_fqn, _, name = tensor_fqn.rpartition(".")
        key = f"{module_fqn + '.' if module_fqn else ''}parametrizations.{name}.0.mask"
        if module_fqn not in modules or key not in state:
            raise FormatError(f"round checkpoint names {tensor_fqn!r}, which this model does not have")
        set_mask(modules[module_fqn], state[key], name)
    model.load_state_dict(state)


def iterative_prune_(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None,
    schedule: Sequence[PruneMethod],
    retrain: TrainConfig,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    select: Selector = None,
    prune_data: Dataset | None = None,
    dropout_adjust: bool = False,
    final_retrain: TrainConfig | None = None,
    meta: dict[str, Any] | None = None,
    quiet: bool = False,
    loss_fn: LossFn | None = None,
) -> list[dict[str, Any]]:
    """Run ``prune_(model, schedule[r])`` then ``fit`` with ``retrain``, for every round ``r``; in place.

    ``prune_data`` feeds criteria that need the loss (OBD; default ``train_data``); ``final_retrain``
    (default ``retrain``) is used for the last round, which often deserves longer. Returns one record per
    round (pruning report, validation accuracy after pruning and after retraining, seconds). With
    ``checkpoint``, writes it after every round (``meta`` plus the rounds so far) and resumes from it.
    ``loss_fn`` replaces the retraining loss (e.g. :class:`deepshrink.train.DistillationLoss`).
    """
    if not schedule:
        raise ConfigError("the pruning schedule has no rounds")
    rounds: list[dict[str, Any]] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        payload = read_checkpoint(checkpoint)
        done = payload.get("meta", {}).get("prune_rounds", [])
        if len(done) > len(schedule):
            raise FormatError(f"{checkpoint}: records {len(done)} rounds but the schedule has {len(schedule)}")
        _restore(model, payload)
        rounds, start = list(done), len(done)
        if not quiet:
            print(f"resuming from {checkpoint}: {start} of {len(schedule)} rounds done")
    adjuster = DropoutAdjuster(model) if dropout_adjust else None
    for r in range(start, len(schedule)):
        started = time.perf_counter()
        report = prune_(model, schedule[r], select, data=prune_data if prune_data is not None else train_data)
        record: dict[str, Any] = {"round": r + 1, "prune": report.to_dict()}
        if val_data is not None:
            record["val_accuracy_pruned"] = evaluate(model, val_data)["accuracy"]
        if adjuster is not None:
            adjuster.update()
        partial = Path(f"{checkpoint}.round{r + 1}.partial") if checkpoint is not None else None
        base = final_retrain if (final_retrain is not None and r == len(schedule) - 1) else retrain
        config = replace(base, seed=base.seed + r)
        history = fit(model, train_data, config, val_data=val_data, checkpoint=partial,
                      checkpoint_meta=meta, quiet=quiet, loss_fn=loss_fn) if config.epochs > 0 else None
        if val_data is not None:
            record["val_accuracy_retrained"] = evaluate(model, val_data)["accuracy"]
        record["history"] = history.epochs if history is not None else []
        record["seconds"] = round(time.perf_counter() - started, 1)
        rounds.append(record)
        if not quiet:
            acc = record.get("val_accuracy_retrained")
            print(f"round {r + 1}/{len(schedule)}: sparsity {report.sparsity:.3f}"
                  + (f", val acc pruned {record['val_accuracy_pruned']:.4f} -> retrained {acc:.4f}" if acc else "")
                  + f" ({record['seconds']}s)")
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, meta={**(meta or {}), "prune_rounds": rounds})
            if partial is not None:
                partial.unlink(missing_ok=True)
    return rounds


__all__ = ["DropoutAdjuster", "iterative_prune_", "rising_schedule", "rising_sparsities"]
