"""Knowledge distillation from an uncompressed teacher: the loss of label-free recovery fine-tunes.

Beyond Hinton et al. 2015's soft targets, ``features`` adds a feature term (FitNets, Romero et al. 2015, with the
student's own layers as hints): the student's outputs of named modules are matched to the teacher's, each error
divided by the teacher feature's mean square so every module weighs alike. A few hundred calibration samples carry
far more signal in a network's intermediate activations than in its final outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..core.errors import ConfigError
from ..core.graph import run_model

__all__ = ["DistillationLoss"]

TARGETS = ("logits", "outputs")


class DistillationLoss:
    """Knowledge distillation as a ``loss_fn`` for :func:`deepshrink.train.fit`.

    ``alpha * (T^2 * KL(softmax(teacher/T) || softmax(student/T)) + feature_weight * features) + (1 - alpha) *
    CE(student, labels)``; the teacher (e.g. the dense model a compression run started from) is frozen and run in
    eval mode. Without labels (calibration data) only the distillation terms are used. ``target="outputs"``
    matches the outputs themselves (mean squared error) instead of class probabilities: for models whose output
    is an embedding. ``features`` names modules (present in both models) whose outputs are matched too, recorded
    by forward hooks while the loss is attached to the student: :func:`~deepshrink.train.fit` attaches it for the
    run (:meth:`attach` / :meth:`detach` for other loops).
    """

    def __init__(self, teacher: nn.Module, alpha: float = 0.5, temperature: float = 4.0, target: str = "logits",
                 features: Sequence[str] = (), feature_weight: float = 1.0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
        if not temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        if target not in TARGETS:
            raise ConfigError(f"distillation target must be logits or outputs, got {target!r}")
        if not feature_weight >= 0:
            raise ConfigError(f"distillation feature_weight must be >= 0, got {feature_weight}")
        self.teacher, self.alpha, self.temperature = teacher.eval().requires_grad_(False), alpha, temperature
        self.target, self.feature_weight = target, feature_weight
        self.features = tuple(features)
        self._seen: dict[str, dict[str, list[Tensor]]] = {"student": {}, "teacher": {}}
        self._handles: list[RemovableHandle] = []

    def attach(self, student: nn.Module) -> None:
        """Record the student's (and the teacher's) ``features`` from now on; a no-op without features."""
        self.detach()
        if self.features:
            self._hook("student", student)
            self._hook("teacher", self.teacher)

    def detach(self) -> None:
        """Remove the feature hooks from both models."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for record in self._seen.values():
            record.clear()

    def _hook(self, role: str, model: nn.Module) -> None:
        named = dict(model.named_modules())
        missing = [name for name in self.features if name not in named]
        if missing:
            self.detach()
            raise ConfigError(f"distillation features {missing} are not modules of the {role} model")
        record, training = self._seen[role], role == "student"
        for name in self.features:
            def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                # the student's training forwards only (an evaluation between epochs runs without gradients)
                if isinstance(out, Tensor) and (not training or torch.is_grad_enabled()):
                    record.setdefault(name, []).append(out)
            self._handles.append(named[name].register_forward_hook(hook))

    def __call__(self, logits: Tensor, labels: Tensor | None, inputs: Any) -> Tensor:
        student_features = self._seen["student"]
        self._seen["teacher"].clear()
        with torch.no_grad():
            teacher = run_model(self.teacher, inputs)
        if self.target == "outputs":
            soft = F.mse_loss(logits, teacher)
        else:
            target = F.softmax(teacher / self.temperature, dim=1)
            soft = self.temperature**2 * F.kl_div(F.log_softmax(logits / self.temperature, dim=1), target,
                                                  reduction="batchmean")
        if self.features:
            if not self._handles:
                raise RuntimeError("feature distillation is not attached to the student (DistillationLoss.attach)")
            soft = soft + self.feature_weight * self._feature_term(student_features, self._seen["teacher"])
            student_features.clear()
        if labels is None or self.alpha == 1.0:
            return soft if labels is None else self.alpha * soft
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(logits, labels)

    def _feature_term(self, student: dict[str, list[Tensor]], teacher: dict[str, list[Tensor]]) -> Tensor:
        """Mean over the named modules' calls of the student's squared error relative to the teacher's features."""
        terms = []
        for name in self.features:
            mine, theirs = student.get(name, []), teacher.get(name, [])
            if len(mine) != len(theirs):
                raise RuntimeError(f"distillation feature {name!r} was called {len(mine)} times in the student's "
                                   f"forward and {len(theirs)} in the teacher's")
            for s, t in zip(mine, theirs, strict=True):
                terms.append(F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12))
        if not terms:
            raise RuntimeError(f"none of the distillation features {list(self.features)} ran in the forward pass")
        return torch.stack(terms).mean()
