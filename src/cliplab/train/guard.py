"""One training process per run folder, and no worker outliving its launcher.

A run folder is locked (``flock`` on ``RUN/.lock``) by the process that writes it for as long as it runs; the
kernel drops the lock when the process dies, however it dies, so a killed run never leaves a stale lock. A
second ``cliplab train`` on the same folder (a resume started while the first still runs) is refused instead
of the two pruning each other's checkpoints. Workers started by torchrun ask the kernel for SIGTERM when
their launcher dies: torchrun starts them in their own sessions, so killing the launcher's process group
would otherwise leave them training.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import IO

from cliplab.fileio import lock_folder

__all__ = ["die_with_launcher", "lock_run"]

LOCK = ".lock"


def lock_run(run_dir: Path) -> IO[str] | None:
    """Lock ``run_dir`` (created if needed) for this process; keep the returned file open while the run lasts.
    ``None`` where ``flock`` does not exist."""
    return lock_folder(run_dir, LOCK, "another training process{pid} is writing this run; wait for it to end "
                                      "or stop it, then resume")


def die_with_launcher() -> None:
    """Under torchrun on Linux: SIGTERM this process when its parent (the launcher) dies."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request: go now
        os.kill(os.getpid(), signal.SIGTERM)
