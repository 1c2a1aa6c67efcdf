"""Stopped runs lose nothing: a resumed recipe run writes the same ``.dsz``, byte for byte, as one never stopped.

The kill test stops ``deepshrink compress`` with SIGKILL from this (parent) process twice, once inside a retraining
epoch and once halfway through writing the file, resumes it each time with the same command and compares the
bytes with an uninterrupted run. The in-process tests resume from every checkpoint a run writes, check that a
changed recipe or starting model is refused unless restarted, that Ctrl-C says where it stopped and how to go on,
and that ``prune --rounds`` and ``ternary`` resume the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from deepshrink.cli import app
from deepshrink.codec import read_compressed
from deepshrink.core import ConfigError, FormatError
from deepshrink.data import load_dataset
from deepshrink.models import build_model
from deepshrink.recipes import compress_checkpoint
from deepshrink.train import TrainConfig, fit, load_checkpoint, resume, save_checkpoint
from deepshrink.train import loop as train_loop

HERE = Path(__file__).resolve().parent
BATCHES_PER_EPOCH = 18  # digits: 1,140 training samples in batches of 64
RECIPE = {
    "name": "resumable",
    "seed": 3,
    "stages": [
        {"prune": {"sparsity": {"fc1": 0.8, "fc2": 0.7, "fc3": 0.5}, "rounds": 2,
                   "retrain": {"epochs": 2, "batch_size": 64}, "distill": {"alpha": 0.5}}},
        {"retrain": {"epochs": 1, "batch_size": 64}},
        {"share": {"bits": {"fc": 3}, "init": "linear"}},
        {"finetune": {"epochs": 1, "lr": 1.0e-3, "batch_size": 64}},
        {"encode": {"entropy": "huffman", "index_bits": "auto", "index_coding": "auto"}},
    ],
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained LeNet-300 on digits and the recipe, side by side."""
    folder = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=[32, 16])
    config = TrainConfig(epochs=1, lr=0.1, batch_size=64)
    fit(model, load_dataset("digits", "train"), config, quiet=True)
    save_checkpoint(folder / "base.pt", model, meta={"dataset": "digits", "config": config.__dict__})
    (folder / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    return folder


def _compress_args(out: str) -> list[str]:
    return ["compress", "base.pt", "--recipe", "recipe.yaml", "--out", out, "--threads", "1", "--quiet"]


def _subprocess(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _kill_when(process: subprocess.Popen[bytes], marker: Path, timeout: float = 60) -> None:
    """SIGKILL ``process`` as soon as it has touched ``marker`` (it then sleeps, stopped where we want it)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before its stop point:\n{process.communicate()[0].decode()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the run did not reach its stop point in time")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def _finish(process: subprocess.Popen[bytes]) -> str:
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0, output
    return output


@pytest.mark.slow  # subprocesses (still run by make test)
@pytest.mark.timeout(180)
def test_killed_twice_then_resumed_writes_the_same_bytes(base: Path) -> None:
    """Done-when of issue 18: SIGKILL inside a retraining epoch, then halfway through writing the file; the
    same command resumes each time; the final file equals an uninterrupted run's byte for byte."""
    reference = _subprocess(base, "-m", "deepshrink", *_compress_args("reference.dsz"))
    _finish(reference)
    out, workdir = base / "out.dsz", base / "out.dsz.run"
    # 1. inside epoch 2 of the second pruning round (the first round's training done, its epoch 1 saved)
    stop = 2 * BATCHES_PER_EPOCH + BATCHES_PER_EPOCH + BATCHES_PER_EPOCH // 2
    _kill_when(_subprocess(base, str(HERE / "stop_run.py"), f"batch={stop}", "m1", *_compress_args("out.dsz")),
               base / "m1")
    assert sorted(p.name for p in workdir.iterdir()) == ["fit-01-001.pt", "fit-01-002.pt", "run.json"]
    assert not out.exists()
    # 2. the same command resumes there; killed again halfway through writing the file
    _kill_when(_subprocess(base, str(HERE / "stop_run.py"), "write", "m2", *_compress_args("out.dsz")), base / "m2")
    assert not out.exists() and list(base.glob(".out.dsz.*.tmp"))  # the atomic write never renamed its temporary
    assert (workdir / "stage.pt").is_file()
    # 3. the same command again: resumes after the last finished stage and completes
    output = _finish(_subprocess(base, "-m", "deepshrink", *_compress_args("out.dsz")))
    assert out.read_bytes() == (base / "reference.dsz").read_bytes(), output
    assert not workdir.exists() and not list(base.glob(".out.dsz.*.tmp"))


def _count_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen = [0]
    original = train_loop.split_batch

    def counted(batch: Any) -> Any:
        seen[0] += 1
        return original(batch)

    monkeypatch.setattr(train_loop, "split_batch", counted)
    return seen


@pytest.mark.slow  # many recipe runs (still run by make test)
def test_resuming_from_every_checkpoint_writes_the_same_bytes(base: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every checkpoint a run writes (after each epoch and stage) is a valid place to resume from: each resumed run
    trains only what was left and writes the uninterrupted run's bytes."""
    workdir, snapshots = tmp_path / "run", tmp_path / "snapshots"
    original = resume.save_checkpoint

    def snapshot(path: Any, *args: Any, **kwargs: Any) -> None:
        original(path, *args, **kwargs)
        shutil.copytree(workdir, snapshots / f"{len(list(snapshots.glob('*'))) if snapshots.exists() else 0:02d}")

    monkeypatch.setattr(resume, "save_checkpoint", snapshot)
    seen = _count_batches(monkeypatch)
    args: dict[str, Any] = {"quiet": True, "workdir": workdir}
    compress_checkpoint(base / "base.pt", base / "recipe.yaml", tmp_path / "a.dsz", **args)
    reference, total = (tmp_path / "a.dsz").read_bytes(), seen[0]
    assert not workdir.exists()
    monkeypatch.setattr(resume, "save_checkpoint", original)
    names = sorted(snapshots.iterdir())
    assert len(names) == 5 + 2 + 1 + 2  # pruning 4 epochs + stage, retrain 1 + stage, share stage, finetune 1 + stage
    for snap in names:
        shutil.copytree(snap, workdir)
        seen[0] = 0
        compress_checkpoint(base / "base.pt", base / "recipe.yaml", tmp_path / "b.dsz", resume="resume", **args)
        assert (tmp_path / "b.dsz").read_bytes() == reference, f"resumed from {sorted(p.name for p in snap.iterdir())}"
        assert seen[0] < total  # what had been trained was not trained again


def test_changed_recipe_or_model_is_refused_unless_restarted(base: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The run directory's fingerprint: another recipe, starting model or seed is a ConfigError naming what
    changed; ``--restart`` (mode ``restart``) discards the stopped run."""
    workdir = tmp_path / "run"
    stop = _count_batches(monkeypatch)
    original = train_loop.split_batch

    def interrupt_at(n: int) -> None:
        def maybe(batch: Any) -> Any:
            if stop[0] >= n:
                raise KeyboardInterrupt
            return original(batch)

        monkeypatch.setattr(train_loop, "split_batch", maybe)

    interrupt_at(BATCHES_PER_EPOCH + 3)
    with pytest.raises(resume.RunInterrupted) as info:
        compress_checkpoint(base / "base.pt", base / "recipe.yaml", tmp_path / "x.dsz", quiet=True, workdir=workdir)
    assert "stage 1/5 (prune), training run 1, epoch 2/2" in str(info.value)
    assert "after epoch 1/2 of training run 1 in stage 1/5 (prune)" in str(info.value)
    changed = {**RECIPE, "stages": [*RECIPE["stages"][:2], {"share": {"bits": {"fc": 4}}}, *RECIPE["stages"][3:]]}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigError, match=r"another recipe.*--restart"):
        compress_checkpoint(base / "base.pt", tmp_path / "changed.yaml", tmp_path / "x.dsz", quiet=True,
                            workdir=workdir)
    with pytest.raises(ConfigError, match=r"other options \(seed 3 -> 4\)"):
        compress_checkpoint(base / "base.pt", base / "recipe.yaml", tmp_path / "x.dsz", seed=4, quiet=True,
                            workdir=workdir)
    model, meta = load_checkpoint(base / "base.pt")
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1
    with pytest.raises(ConfigError, match="another starting model"):
        compress_checkpoint(None, base / "recipe.yaml", tmp_path / "x.dsz", quiet=True, workdir=workdir, model=model,
                            meta=meta)
    interrupt_at(10**9)
    compress_checkpoint(base / "base.pt", tmp_path / "changed.yaml", tmp_path / "x.dsz", quiet=True,
                        workdir=workdir, resume="restart")
    assert (tmp_path / "x.dsz").is_file() and not workdir.exists()
    with pytest.raises(ConfigError, match="nothing to resume"):
        compress_checkpoint(base / "base.pt", base / "recipe.yaml", tmp_path / "x.dsz", quiet=True, workdir=workdir,
                            resume="resume")


def test_workdir_must_be_a_run_directory(base: Path, tmp_path: Path) -> None:
    """A non-empty folder without run.json is never used (nor cleared) as a run directory."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for mode in ("auto", "restart"):
        with pytest.raises(ConfigError, match="not a deepshrink run directory"):
            resume.RunDir.open(tmp_path / "mine", {"x": 1}, mode)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    result = CliRunner().invoke(app, [*_compress_args(str(tmp_path / "y.dsz")), "--resume", "--restart"])
    assert isinstance(result.exception, ConfigError) and "not both" in str(result.exception)


def _interrupting(monkeypatch: pytest.MonkeyPatch, at_batch: int) -> None:
    seen, original = [0], train_loop.split_batch

    def maybe(batch: Any) -> Any:
        seen[0] += 1
        if seen[0] == at_batch:
            raise KeyboardInterrupt
        return original(batch)

    monkeypatch.setattr(train_loop, "split_batch", maybe)


@pytest.mark.slow  # CLI training runs (still run by make test)
def test_ctrl_c_says_where_and_how_to_resume(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C: exit status 130, where it stopped, the last checkpoint, and the command that continues; running it
    writes the uninterrupted run's bytes."""
    monkeypatch.chdir(base)
    runner = CliRunner()
    result = runner.invoke(app, _compress_args("ctrlc-ref.dsz"))
    assert result.exit_code == 0, result.output
    _interrupting(monkeypatch, 4 * BATCHES_PER_EPOCH + 2)  # pruning trains 2 rounds x 2 epochs; then retrain
    result = runner.invoke(app, _compress_args("ctrlc.dsz"))
    assert result.exit_code == 130, result.output
    assert "stopped in stage 2/5 (retrain), training run 1, epoch 1/1" in result.output
    assert "last checkpoint: after stage 1/5 (prune)" in result.output
    command = next(line for line in result.output.splitlines() if line.startswith("continue with: "))
    words = command.removeprefix("continue with: deepshrink ").split()
    assert words[-1] == "--resume" and "--threads" in words
    monkeypatch.undo()
    monkeypatch.chdir(base)
    result = runner.invoke(app, words)
    assert result.exit_code == 0, result.output
    assert (base / "ctrlc.dsz").read_bytes() == (base / "ctrlc-ref.dsz").read_bytes()


@pytest.mark.slow  # CLI training runs (still run by make test)
def test_prune_rounds_and_ternary_resume(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prune --rounds`` and ``ternary`` keep the same run directory: stopped and rerun, they end where an
    uninterrupted run ends (weights equal bit for bit; their reports carry timings, so not the bytes)."""
    runner = CliRunner()
    prune = ["prune", str(base / "base.pt"), "--sparsity", "0.7", "--rounds", "2", "--retrain-epochs", "2",
             "--quiet"]
    ternary = ["ternary", str(base / "base.pt"), "--epochs", "2", "--batch-size", "64", "--all-layers", "--quiet"]
    for args, name in ((prune, "p.pt"), (ternary, "t.dsz")):
        with monkeypatch.context() as patch:
            seen = _count_batches(patch)
            assert runner.invoke(app, [*args, "--out", str(tmp_path / f"ref-{name}")]).exit_code == 0
            total = seen[0]
        with monkeypatch.context() as patch:
            _interrupting(patch, BATCHES_PER_EPOCH + 5)
            result = runner.invoke(app, [*args, "--out", str(tmp_path / name)])
        assert result.exit_code == 130 and "--resume" in result.output, result.output
        assert (tmp_path / f"{name}.run" / "run.json").is_file()
        with monkeypatch.context() as patch:
            seen = _count_batches(patch)
            result = runner.invoke(app, [*args, "--out", str(tmp_path / name)])
            assert result.exit_code == 0, result.output
            assert seen[0] == total - BATCHES_PER_EPOCH  # the first epoch was not trained again
        assert not (tmp_path / f"{name}.run").exists()
        if name.endswith(".pt"):
            got, want = load_checkpoint(tmp_path / name)[0], load_checkpoint(tmp_path / f"ref-{name}")[0]
            assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values(),
                                                         strict=True))
        else:
            got_file, want_file = read_compressed(tmp_path / name), read_compressed(tmp_path / f"ref-{name}")
            assert got_file.weights.keys() == want_file.weights.keys()
            for key, weight in got_file.weights.items():
                assert (weight.dense() == want_file.weights[key].dense()).all()


def test_fit_checkpoint_resumes_data_order_and_random_state(tmp_path: Path) -> None:
    """``fit(checkpoint=...)`` (``deepshrink train``) now keeps the data order and RNG states too: a resumed run
    ends with exactly the weights of an uninterrupted one, dropout included."""
    data = load_dataset("digits", "train", limit=256)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                   torch.nn.Linear(16, 10))

    config = TrainConfig(epochs=3, lr=0.05, batch_size=32)
    uninterrupted = model()
    fit(uninterrupted, data, config, quiet=True)

    class Stop(Exception):
        pass

    class StopAfterEpoch:
        def on_epoch_end(self, model: torch.nn.Module, epoch: int, metrics: dict) -> None:
            if epoch == 1:  # after epoch 0 was checkpointed
                raise Stop

    with pytest.raises(Stop):
        fit(model(), data, config, callbacks=(StopAfterEpoch(),), checkpoint=tmp_path / "c.pt", quiet=True)
    torch.manual_seed(123)  # another process: other random states until the checkpoint restores them
    resumed = model()
    fit(resumed, data, config, checkpoint=tmp_path / "c.pt", quiet=True)
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_run_directory_without_checkpoints_or_with_a_damaged_description(tmp_path: Path) -> None:
    """Nothing saved yet: another fingerprint simply starts afresh. A damaged run.json is a FormatError that
    ``restart`` clears."""
    resume.RunDir.open(tmp_path / "run", {"recipe": "a"})
    run = resume.RunDir.open(tmp_path / "run", {"recipe": "b"})
    assert not run.resumed and '"b"' in (tmp_path / "run" / "run.json").read_text()
    (tmp_path / "run" / "run.json").write_text("{not json")
    with pytest.raises(FormatError, match="--restart"):
        resume.RunDir.open(tmp_path / "run", {"recipe": "b"})
    resume.RunDir.open(tmp_path / "run", {"recipe": "b"}, "restart")
    assert '"b"' in (tmp_path / "run" / "run.json").read_text()
