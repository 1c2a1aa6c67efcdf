"""Run ``deepshrink ARGS...`` and stop it at a chosen point, for the kill test (``test_resume.py``).

    python stop_run.py batch=N MARKER ARGS...   # block at the N-th training batch (inside an epoch)
    python stop_run.py write MARKER ARGS...     # block halfway through writing the .dsz file

At that point the run touches MARKER and sleeps until its parent kills it (SIGKILL: no handler, no cleanup).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _stop(marker: Path) -> None:
    marker.touch()
    time.sleep(600)
    os._exit(3)  # never reached when the parent kills us


def main() -> None:
    mode, marker_arg, *args = sys.argv[1:]
    marker = Path(marker_arg)
    if mode.startswith("batch="):
        from deepshrink.train import loop

        target, seen = int(mode.split("=", 1)[1]), [0]
        original = loop.split_batch

        def counted(batch: Any) -> Any:
            seen[0] += 1
            if seen[0] == target:
                _stop(marker)
            return original(batch)

        loop.split_batch = counted  # type: ignore[assignment]
    elif mode == "write":
        from deepshrink.codec import encode
        from deepshrink.core.atomic import atomic_open

        def half(path: Any, data: bytes) -> None:
            with atomic_open(path) as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
                _stop(marker)

        encode.atomic_write_bytes = half  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from deepshrink.cli import main as cli

    sys.argv = ["deepshrink", *args]
    cli()


if __name__ == "__main__":
    main()
