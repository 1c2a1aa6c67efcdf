"""Layer selection on any module: types, globs, callables; unsupported layers listed, never raised."""

from __future__ import annotations

import pytest
from torch import nn

from deepshrink.core import ConfigError, layer_kind, select_layers, set_mask, summary


def test_default_selection_skips_and_lists_unsupported(tiny_mixed) -> None:
    selection = select_layers(tiny_mixed)
    assert selection.names() == ["embed", "conv", "grouped", "depthwise", "conv1d", "head"]
    skipped = dict(selection.skipped)
    assert skipped == {"norm": "unsupported layer type LayerNorm"}


def test_select_by_type_glob_alias_and_callable(tiny_mixed) -> None:
    assert select_layers(tiny_mixed, nn.Linear).names() == ["head"]
    assert select_layers(tiny_mixed, "type:conv").names() == ["conv", "grouped", "depthwise", "conv1d"]
    assert select_layers(tiny_mixed, ["g*", "head"]).names() == ["grouped", "head"]
    assert select_layers(tiny_mixed, lambda m, fqn: getattr(m, "groups", 1) > 1).names() == ["grouped", "depthwise"]
    assert select_layers(tiny_mixed, exclude="conv*").names() == ["embed", "grouped", "depthwise", "head"]
    assert select_layers(tiny_mixed, "type:embedding").names() == ["embed"]
    with pytest.raises(ConfigError, match="unknown layer type"):
        select_layers(tiny_mixed, "type:lstm")


def test_selection_still_finds_parametrized_layers(tiny_mixed) -> None:
    set_mask(tiny_mixed.head, tiny_mixed.head.weight != 0)
    assert "head" in select_layers(tiny_mixed).names()
    assert layer_kind(tiny_mixed.head) == "fc" and layer_kind(tiny_mixed.conv) == "conv"
    assert layer_kind(tiny_mixed.embed) == "fc"  # a matrix read a row at a time


def test_summary_rows_and_json(tiny_mixed) -> None:
    mask = tiny_mixed.head.weight.abs() > 0.2
    set_mask(tiny_mixed.head, mask)
    table = summary(tiny_mixed)
    rows = {r.name: r for r in table.layers}
    assert rows["head"].type == "Linear"
    assert rows["head"].nonzeros == int(mask.sum())
    assert rows["head"].params == 12 and rows["conv"].bits == 32.0
    data = table.to_dict()
    assert set(data["layers"][0]) >= {"name", "shape", "params", "nonzeros", "bits", "bytes"}
    assert data["total"]["params"] == sum(p.numel() for p in tiny_mixed.parameters())
    assert "head" in str(table)


def test_summary_macs_for_lenet5() -> None:
    from deepshrink.models import build_model

    table = summary(build_model("lenet5"), input_size=(1, 28, 28))
    macs = {r.name: r.macs for r in table.layers}
    assert macs["conv1"] == 20 * 24 * 24 * 25
    assert macs["conv2"] == 50 * 8 * 8 * 20 * 25
    assert macs["fc1"] == 800 * 500
