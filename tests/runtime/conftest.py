"""Runtime tests exercise the sparse kernels on small layers: the rule that runs tiny layers dense
(``policy.DENSE_MAX_WEIGHTS``) is off here, except in the tests of that rule."""

from __future__ import annotations

import pytest

from deepshrink.runtime import policy


@pytest.fixture(autouse=True)
def _sparse_kernels_on_small_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "DENSE_MAX_WEIGHTS", {kind: -1 for kind in policy.DENSE_MAX_WEIGHTS})
