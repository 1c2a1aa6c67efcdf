"""Two CPU processes under torchrun (gloo) finish with identical weights and a falling loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.timeout(240)
@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_torchrun_two_ranks_identical_weights(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("ddp_worker.py")
    prefix = tmp_path / "result"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
           "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(worker), str(prefix)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    weights = [torch.load(f"{prefix}.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(weights[0], weights[1])
    reports = [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world"] == 2
        assert report["pruned_zero"]
        losses = report["losses"]
        assert losses[-1] < losses[0] < report["loss_before"]
