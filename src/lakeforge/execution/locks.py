"""Per-dataset build locks: a dataset is never built by two runs at once.

A run holds the lock from its staleness check to its commit, so a second run that waits
for it re-checks and finds the dataset up to date instead of building it again. Locks are
``flock`` files under the project's state folder: they serialize runs on one machine and
vanish with the process that held them (a killed run never leaves a stale lock). With a
PostgreSQL metadata store, shared by workers on several machines, the lock is also taken
in the database (an advisory lock, released by the server when its session dies).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lakeforge.metadata.store import MetadataStore


class DatasetLock:
    """An exclusive, blocking, process-crash-safe lock on one dataset."""

    def __init__(
        self,
        state_dir: Path,
        dataset: str,
        metadata: MetadataStore | None = None,
        table_uri: str | None = None,
    ) -> None:
        self.path = state_dir / "locks" / f"{dataset}.lock"
        self._fd: int | None = None
        self._shared: AbstractContextManager[None] | None = None
        if metadata is not None and metadata.shared:
            # Named by the table's location, which every machine sees the same (a checkout's
            # path may differ between machines); one database may serve several projects.
            self._shared = metadata.advisory_lock(f"lakeforge:{table_uri or dataset}")

    def __enter__(self) -> DatasetLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if self._shared is not None:
            try:
                self._shared.__enter__()
            except BaseException:
                self._release_file()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._shared is not None:
                self._shared.__exit__(exc_type, exc, tb)
        finally:
            self._release_file()

    def _release_file(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
