"""Per-dataset build locks: a dataset is never built by two runs at once.

A run holds the lock from its staleness check to its commit, so a second run that waits
for it re-checks and finds the dataset up to date instead of building it again. Locks are
``flock`` files under the project's state folder: they serialize runs on one machine and
vanish with the process that held them (a killed run never leaves a stale lock).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


class DatasetLock:
    """An exclusive, blocking, process-crash-safe lock on one dataset."""

    def __init__(self, state_dir: Path, dataset: str) -> None:
        self.path = state_dir / "locks" / f"{dataset}.lock"
        self._fd: int | None = None

    def __enter__(self) -> DatasetLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
