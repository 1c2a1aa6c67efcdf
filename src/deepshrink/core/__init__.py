"""Shared core: per-weight compression state, layer selection, summary, errors, atomic writes."""

from .atomic import atomic_open, atomic_save, atomic_write_bytes, atomic_write_text
from .edits import EDITS, record_edit, recorded_edits, register_edit, replay_edits, set_submodule
from .errors import ConfigError, DataError, DeepShrinkError, FormatError, UnsupportedLayerError
from .fold import find_bn_pairs, fold_batchnorm_
from .quantized import dequantize
from .select import SUPPORTED_LAYERS, Selection, Selector, layer_kind, layer_type_name, select_layers
from .state import (
    STATE_CLASSES,
    Mask,
    ValueTransform,
    WeightState,
    apply_masks_,
    bake_,
    compression_spec,
    get_mask,
    get_value_transform,
    iter_states,
    latent_weight,
    prepare_for_state_dict,
    register_state_class,
    set_mask,
    set_value_transform,
    value_transform_for_kind,
)
from .summary import LayerRow, Summary, summary

__all__ = [
    "EDITS",
    "STATE_CLASSES",
    "SUPPORTED_LAYERS",
    "ConfigError",
    "DataError",
    "DeepShrinkError",
    "FormatError",
    "LayerRow",
    "Mask",
    "Selection",
    "Selector",
    "Summary",
    "UnsupportedLayerError",
    "ValueTransform",
    "WeightState",
    "apply_masks_",
    "atomic_open",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "bake_",
    "compression_spec",
    "dequantize",
    "find_bn_pairs",
    "fold_batchnorm_",
    "get_mask",
    "get_value_transform",
    "iter_states",
    "latent_weight",
    "layer_kind",
    "layer_type_name",
    "prepare_for_state_dict",
    "record_edit",
    "recorded_edits",
    "register_edit",
    "register_state_class",
    "replay_edits",
    "select_layers",
    "set_mask",
    "set_submodule",
    "set_value_transform",
    "summary",
    "value_transform_for_kind",
]
