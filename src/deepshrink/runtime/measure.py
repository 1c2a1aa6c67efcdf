"""Side-by-side measurement: interleaved timing, resident bytes, peak memory of loading in a fresh process.

Used by ``deepshrink bench`` and ``benchmarks/bench_runtime*.py`` so every figure is taken the same way:
all contenders run in the same process with the same thread count, one call each per round in rotating
order (so background load hits them alike), and the median over rounds is reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numba
import torch
from torch import nn

from ..core.errors import ConfigError


def set_threads(threads: int) -> None:
    """The same intra-op thread count for torch and numba (the kernels' parallel sections)."""
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, int(numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


def compare(
    contenders: Mapping[str, Callable[[], Any]], *, repeats: int = 30, warmup: int = 3, budget_s: float | None = None
) -> dict[str, dict[str, float]]:
    """``{name: {median_ms, p10_ms, p90_ms, cpu_median_ms, rounds}}`` over interleaved rounds (rotating order).

    ``cpu_median_ms`` is the calling thread's CPU time (``time.thread_time``): with one thread it is the
    figure that stays put when other processes share the cores, because time spent descheduled is not
    counted. ``budget_s`` caps the total time: rounds stop early (at least 5) when it runs out.
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    names = list(contenders)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                contenders[name]()
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        started = time.perf_counter()
        for round_ in range(repeats):
            order = names[round_ % len(names):] + names[: round_ % len(names)]
            for name in order:
                c0 = time.thread_time()
                t0 = time.perf_counter()
                contenders[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)
            if budget_s is not None and round_ >= 4 and time.perf_counter() - started > budget_s:
                break
    out: dict[str, dict[str, float]] = {}
    for name, values in wall.items():
        ordered = sorted(values)
        out[name] = {
            "median_ms": 1e3 * statistics.median(ordered),
            "p10_ms": 1e3 * ordered[int(0.1 * (len(ordered) - 1))],
            "p90_ms": 1e3 * ordered[int(0.9 * (len(ordered) - 1))],
            "cpu_median_ms": 1e3 * statistics.median(cpu[name]),
            "rounds": float(len(ordered)),
        }
    return out


def resident_bytes(model: nn.Module) -> int:
    """Bytes the model holds: parameters, buffers and runtime layouts (each storage counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_meta:
            continue
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    for module in model.modules():
        nbytes = getattr(module, "nbytes", None)
        if isinstance(nbytes, int):
            total += nbytes
    return total


def layer_kernels(model: nn.Module) -> dict[str, str]:
    """``{module fqn: kernel}``: the kernel each runtime layer ran on its last call (its ``last_kernel``; layers
    not yet called are left out), i.e. what :mod:`.policy` chose for that call's batch."""
    return {fqn: str(module.last_kernel) for fqn, module in model.named_modules()
            if getattr(module, "last_kernel", "")}


def dynamic_int8(model: nn.Module) -> nn.Module:
    """torch's dynamic int8 quantization of every ``nn.Linear`` (the common CPU baseline)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch 2.13 flags its quantized tensors as deprecated; still the baseline
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


_CHILD = r"""
import gc, json, sys, time
import torch
torch.set_num_threads({threads})
import deepshrink.runtime as rt
from deepshrink.train import load_checkpoint
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)
def load_and_run():
    model = rt.load({path!r}) if {runtime} else load_checkpoint({path!r})[0].eval()
    with torch.inference_mode():
        model(torch.zeros({shape}))
    return model
# a first load warms the engine (imports, numba kernels from the cache, allocator pools); the second one,
# measured from a reset peak-RSS mark, is the model's own memory
start = status("VmRSS")
gc.collect()
del_model = load_and_run()
del del_model
gc.collect()
engine = status("VmRSS") - start
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS high-water mark (VmHWM) to the current RSS
base = status("VmRSS")
t0 = time.perf_counter()
model = load_and_run()
load_s = time.perf_counter() - t0
print(json.dumps({{"peak_delta_bytes": status("VmHWM") - base, "rss_delta_bytes": status("VmRSS") - base,
                  "engine_bytes": engine, "load_s": load_s, "resident_bytes": rt.measure.resident_bytes(model)}}))
"""


def load_memory(path: str | os.PathLike[str], *, runtime: bool, input_shape: tuple[int, ...],
                threads: int = 1) -> dict[str, float]:
    """Memory of loading ``path`` and running one batch-1 forward, in a fresh Python process.

    ``runtime`` True: ``deepshrink.runtime.load`` of a ``.dsz`` file; False: a dense fp32 checkpoint.
    The model is loaded and run once to warm the engine (``engine_bytes``: imports, kernels, allocator
    pools), dropped, and loaded again from a reset peak-RSS mark: ``peak_delta_bytes`` is the rise of peak
    RSS that this second load + forward causes, ``rss_delta_bytes`` what stays resident; plus the load time
    (warm) and the model's resident bytes.
    """
    script = _CHILD.format(threads=threads, page=os.sysconf("SC_PAGE_SIZE"), path=str(path), runtime=runtime,
                           shape=(1, *input_shape))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {path} failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


_COLD = r"""
import json, time
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
import deepshrink.runtime as rt
t1 = time.perf_counter()
model = rt.load({path!r})
t2 = time.perf_counter()
with torch.inference_mode():
    model(torch.zeros({shape}))
    t3 = time.perf_counter()
    model(torch.zeros({shape}))
    t4 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "first_forward_s": t3 - t2, "second_forward_s": t4 - t3}}))
"""


def kernel_start_cost(path: str | os.PathLike[str], *, input_shape: tuple[int, ...], threads: int = 1,
                      cache_dir: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Numba compile cost apart from steady-state latency: a fresh process with an empty kernel cache
    (``cold``: compiles every kernel the model uses on its first forward), then a second fresh process
    reusing that cache (``cached``: loads the compiled code). ``cache_dir`` must be an empty folder."""
    script = _COLD.format(threads=threads, path=str(path), shape=(1, *input_shape))
    out: dict[str, dict[str, float]] = {}
    for label in ("cold", "cached"):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                              env={**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"})
        if done.returncode != 0:
            raise RuntimeError(f"start-up probe of {path} failed:\n{done.stderr[-2000:]}")
        out[label] = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    return out
