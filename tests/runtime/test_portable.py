"""The kernels' portable builds: the tile and int8 property tests in a process whose numba target is plain x86-64
(SSE2, no AVX) with ``DEEPSHRINK_RUNTIME_SIMD=0``, so LLVM lowers the 16-lane vector IR to the narrow vectors of
a host without AVX-512 and the int8 products run the portable kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_kernels_on_a_plain_x86_64_target(tmp_path: Path) -> None:
    env = os.environ | {"DEEPSHRINK_RUNTIME_SIMD": "0", "NUMBA_CPU_NAME": "x86-64",
                        "NUMBA_CPU_FEATURES": "+64bit,+sse,+sse2,+cx8,+fxsr,+mmx", "NUMBA_CACHE_DIR": str(tmp_path)}
    files = [str(HERE / "test_tiles.py"), str(HERE / "test_int8.py")]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:cacheprovider", *files],
                          env=env, cwd=HERE.parent.parent, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
