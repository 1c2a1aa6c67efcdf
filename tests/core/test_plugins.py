"""Files naming technique state or edits load in a fresh process that never imported the technique."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from deepshrink.lowrank import SVDLinear, svd_linear_
from deepshrink.models import build_model
from deepshrink.prune import MagnitudePrune, prune_
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.train import save_checkpoint


@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_checkpoint_with_sharing_and_lowrank_loads_in_fresh_process(tmp_path) -> None:
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=[32, 16])
    svd_linear_(model, SVDLinear(rank=8), select="fc2")
    prune_(model, MagnitudePrune(sparsity=0.5), select="fc1")
    share_weights_(model, WeightSharing(bits=3), select="fc1")
    x = torch.randn(4, 64)
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).detach(), tmp_path / "y.pt")
    save_checkpoint(tmp_path / "model.pt", model)
    script = textwrap.dedent(
        f"""
        import sys, torch
        import deepshrink
        assert "deepshrink.share" not in sys.modules and "deepshrink.lowrank" not in sys.modules
        model, _ = deepshrink.load_checkpoint({str(tmp_path / "model.pt")!r})
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        y = torch.load({str(tmp_path / "y.pt")!r}, weights_only=True)
        assert torch.equal(model(x), y), "outputs differ"
        print(type(model.fc1.parametrizations.weight[1]).__name__)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "SharedWeights"
