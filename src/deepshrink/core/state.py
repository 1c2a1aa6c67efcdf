"""Per-weight compression state, carried as ``torch.nn.utils.parametrize`` chains.

Every technique records what it did to a weight as one step in the weight's parametrization chain:

* :class:`Mask` (pruning) always comes first: ``w * mask``.
* At most one :class:`ValueTransform` follows (weight sharing, fixed point, ternary). A value transform must
  keep positions that the mask removed at exactly zero, so later stages never revive a pruned weight.

The chain survives ``state_dict``/``load_state_dict`` (through :func:`compression_spec` and
:func:`prepare_for_state_dict`), ``copy.deepcopy`` and DDP. Techniques never import each other; they meet here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import ConfigError, FormatError

__all__ = [
    "STATE_CLASSES",
    "Mask",
    "ValueTransform",
    "WeightState",
    "apply_masks_",
    "bake_",
    "compression_spec",
    "get_mask",
    "get_value_transform",
    "iter_states",
    "latent_weight",
    "plain_copy",
    "prepare_for_state_dict",
    "register_state_class",
    "set_mask",
    "set_value_transform",
]

STATE_CLASSES: dict[str, type[WeightState]] = {}
"""Allow-list of parametrization classes that checkpoints and files may name (no lookup outside it)."""


def register_state_class(cls: type[WeightState]) -> type[WeightState]:
    """Class decorator: allow ``cls`` to be rebuilt by name from a checkpoint's compression spec."""
    STATE_CLASSES[cls.__name__] = cls
    return cls


class WeightState(nn.Module):
    """One step of a weight's parametrization chain that holds compression state in buffers/parameters."""

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> WeightState:
        """Rebuild an instance with correctly shaped state from its ``state_dict`` tensors (values loaded later)."""
        raise NotImplementedError

    def on_attached(self, module: nn.Module, name: str) -> None:
        """Called after a checkpoint load re-registers this step on ``module.<name>`` (values not loaded yet).

        Steps with state beyond the weight (fixed point's activation hooks) override; the default does nothing.
        """


@register_state_class
class Mask(WeightState):
    """Pruning mask: ``forward(w) = w * mask``. Gradients at masked positions are exactly zero."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    mask: Tensor

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask.to(weight.dtype)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> Mask:
        return cls(torch.ones(weight_shape, dtype=torch.bool))

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"kept={kept}/{self.mask.numel()}"


class ValueTransform(WeightState):
    """Base of value transforms (codebook, fixed point, ternary): at most one per weight, after the mask.

    Subclasses set ``kind`` (a name in the kind registry, :mod:`deepshrink.core.kinds`, which defines the export
    dict's schema) and implement ``forward`` (differentiable, keeping masked positions at zero), ``bits`` and
    ``export``. :func:`deepshrink.core.kinds.dequantize` of the export equals ``forward``'s output bit for bit.
    """

    kind: ClassVar[str] = "value"

    @property
    def bits(self) -> float:
        """Bits needed per stored (non-zero) weight before entropy coding."""
        raise NotImplementedError

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        """The integer form of the weight this transform produces from ``masked_latent``."""
        raise NotImplementedError

    def on_mask_change(self, mask: Tensor) -> None:
        """Called when the mask before this transform changes; transforms that ignore their input override."""

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> ValueTransform:
        """Rebuild the transform from its exported integer form (the inverse of :meth:`export`)."""
        raise NotImplementedError

    @classmethod
    def attach(cls, module: nn.Module, exported: dict[str, Any], name: str = "weight") -> None:
        """Restore a weight read from a file: latent := dequantized values, then this transform on top.

        Transforms with more state than the weight (e.g. activation formats) override this.
        """
        from .kinds import dequantize

        with torch.no_grad():
            values = torch.from_numpy(dequantize(exported))
            latent_weight(module, name).copy_(values.reshape(latent_weight(module, name).shape))
        set_value_transform(module, cls.from_export(exported), name)


def _chain(module: nn.Module, name: str) -> Any:
    """The ``ParametrizationList`` of ``module.<name>`` (typed loosely: torch's stubs do not describe it)."""
    return getattr(module, "parametrizations")[name]  # noqa: B009


def _parametrizations(module: nn.Module, name: str) -> list[nn.Module]:
    if not parametrize.is_parametrized(module, name):
        return []
    return list(_chain(module, name))


def iter_states(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, list[nn.Module]]]:
    """Yield ``(module_fqn, module, tensor_name, chain)`` for every parametrized tensor in ``model``."""
    for fqn, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in module.parametrizations:
            yield fqn, module, name, _parametrizations(module, name)


def get_mask(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The pruning mask of ``module.<name>`` (bool tensor), or None when it is not pruned."""
    for step in _parametrizations(module, name):
        if isinstance(step, Mask):
            return step.mask
    return None


def get_value_transform(module: nn.Module, name: str = "weight") -> ValueTransform | None:
    """The value transform on ``module.<name>``, or None."""
    for step in _parametrizations(module, name):
        if isinstance(step, ValueTransform):
            return step
    return None


def latent_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """The trainable tensor under the chain (``parametrizations.<name>.original``) or the plain parameter."""
    if parametrize.is_parametrized(module, name):
        return _chain(module, name).original
    return getattr(module, name)


def _register(module: nn.Module, name: str, step: nn.Module) -> None:
    """``register_parametrization`` on a class of ``module``'s own.

    torch gives each parametrized module a generated class holding one property per parametrized tensor, and
    ``copy.deepcopy`` shares that class between original and copy; parametrizing a new tensor name on one
    would then add a broken property to the other. A fresh class per registration keeps them independent.
    """
    if parametrize.is_parametrized(module):
        cls = type(module)
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    parametrize.register_parametrization(module, name, step, unsafe=True)


def set_mask(module: nn.Module, mask: Tensor, name: str = "weight") -> None:
    """Prune ``module.<name>`` with ``mask`` (True = keep), keeping the mask first in the chain.

    The latent weight is zeroed where masked so weight decay and optimizer momentum have nothing to revive.
    A mask is only ever narrowed: positions pruned earlier stay pruned.
    """
    weight = getattr(module, name)
    if mask.shape != weight.shape:
        raise ConfigError(f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(weight.shape)}")
    mask = mask.to(device=weight.device, dtype=torch.bool)
    existing = get_mask(module, name)
    if existing is not None:
        existing.copy_(existing & mask)
        mask = existing
    elif parametrize.is_parametrized(module, name):
        chain = _chain(module, name)
        chain.insert(0, Mask(mask))
    else:
        _register(module, name, Mask(mask))
    with torch.no_grad():
        latent_weight(module, name).mul_(mask.to(weight.dtype))
    transform = get_value_transform(module, name)
    if transform is not None:
        transform.on_mask_change(mask)


def set_value_transform(module: nn.Module, transform: ValueTransform, name: str = "weight") -> None:
    """Attach ``transform`` after the mask; an existing value transform is replaced.

    On replacement the current effective weight is written into the latent tensor first, so the new
    transform starts from what the model computes now (not from a stale pre-quantization latent).
    """
    existing = get_value_transform(module, name)
    if existing is not None:
        with torch.no_grad():
            current = getattr(module, name).detach().clone()
            chain = _chain(module, name)
            index = list(chain).index(existing)
            del chain[index]
            latent_weight(module, name).copy_(current)
    mask = get_mask(module, name)
    if mask is not None:
        transform.on_mask_change(mask)
    _register(module, name, transform)


def apply_masks_(model: nn.Module) -> None:
    """Zero latent weights at masked positions (call after optimizer steps; cheap and idempotent)."""
    with torch.no_grad():
        for _, module, name, chain in iter_states(model):
            for step in chain:
                if isinstance(step, Mask):
                    latent_weight(module, name).mul_(step.mask.to(latent_weight(module, name).dtype))


def bake_module_(module: nn.Module) -> nn.Module:
    """``module`` made its own plain class again, holding its effective tensors as plain parameters (its
    compression state folded in). Safe on a deep copy: torch's ``remove_parametrizations`` would delete the property
    from a parametrized class the copy shares with its original."""
    if parametrize.is_parametrized(module):
        names = list(_chain_names(module))
        values = {name: getattr(module, name).detach().clone() for name in names}
        module.__class__ = module.__class__.__bases__[0]  # the class parametrize derived its class from
        del module._modules["parametrizations"]
        for name, value in values.items():
            module._parameters[name] = nn.Parameter(value, requires_grad=value.is_floating_point())
    return module


def bake_(model: nn.Module) -> nn.Module:
    """Replace every parametrized tensor by its current value (a plain model, state discarded)."""
    for module in list(model.modules()):
        bake_module_(module)
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every parametrized module is its own class again, holding its effective
    tensors as plain parameters (compression state folded in, the original untouched).

    Not ``bake_(copy.deepcopy(model))``: a deep copy shares torch's parametrized classes with the original, and
    removing a parametrization from the copy would delete the property from the original's class too.
    """
    copy_ = copy.deepcopy(model)
    for module in copy_.modules():
        bake_module_(module)
    return copy_


def _chain_names(module: nn.Module) -> list[str]:
    return list(getattr(module, "parametrizations").keys())  # noqa: B009


def compression_spec(model: nn.Module) -> dict[str, list[str]]:
    """``{"fc1.weight": ["Mask", "SharedWeights"], ...}``: the chain class names, for checkpoints and files."""
    spec: dict[str, list[str]] = {}
    for fqn, _, name, chain in iter_states(model):
        spec[f"{fqn}.{name}" if fqn else name] = [type(step).__name__ for step in chain]
    return spec


def prepare_for_state_dict(
    model: nn.Module, spec: Mapping[str, list[str]], state_dict: Mapping[str, Tensor]
) -> None:
    """Rebuild the parametrization chains named in ``spec`` so ``model.load_state_dict(state_dict)`` fits.

    Only classes in :data:`STATE_CLASSES` may be named; anything else is a :class:`FormatError`.
    """
    modules = dict(model.named_modules())
    for tensor_fqn, class_names in spec.items():
        module_fqn, _, name = tensor_fqn.rpartition(".")
        module = modules.get(module_fqn)
        if module is None or not hasattr(module, name):
            raise FormatError(f"compression state names {tensor_fqn!r}, which the model does not have")
        if parametrize.is_parametrized(module, name):
            raise FormatError(f"{tensor_fqn!r} already carries compression state; load into a fresh model")
        shape = getattr(module, name).shape
        for position, class_name in enumerate(class_names):
            cls = STATE_CLASSES.get(class_name)
            if cls is None:
                from .plugins import load_technique_plugins

                load_technique_plugins()
                cls = STATE_CLASSES.get(class_name)
            if cls is None:
                known = ", ".join(sorted(STATE_CLASSES))
                raise FormatError(f"unknown compression state {class_name!r} on {tensor_fqn!r} (known: {known})")
            prefix = f"{module_fqn + '.' if module_fqn else ''}parametrizations.{name}.{position}."
            tensors = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            step = cls.from_tensors(tensors, shape)
            _register(module, name, step)
            step.on_attached(module, name)
