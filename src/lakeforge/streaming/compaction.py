"""Background compaction of streaming tables: small files merged while the stream goes on.

Every micro-batch appends at least one file, so a table fed every few seconds soon holds
thousands of small files and every reader slows down. After each micro-batch that
committed, :class:`Compactor` is asked to look at the table; in its own thread it counts the
files smaller than half the target size and, past ``compaction.min_files``, runs Delta's
``OPTIMIZE`` compaction (``DeltaTable.optimize.compact``) towards ``target_file_size``.

Why it does not block or break the stream:

- it never takes the dataset lock; the next micro-batch commits while it works;
- an ``OPTIMIZE`` commit only rewrites files (``dataChange: false``): appends committed
  meanwhile do not conflict with it; a write that does conflict (a merge that rewrote the
  same files) wins — the compaction's commit fails, is counted, and is tried again after a
  later micro-batch;
- the planner, the interval ledger, freshness and streams reading the table ignore
  maintenance commits, so a compaction never makes anything stale or re-read.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakeforge.storage.delta import DeltaStore
    from lakeforge.streaming.spec import Compaction

log = logging.getLogger(__name__)


@dataclass
class CompactionStats:
    """What the compactor did to one table since the loop started."""

    runs: int = 0
    files_removed: int = 0
    files_added: int = 0
    conflicts: int = 0
    last_error: str | None = None
    small_files: int = 0  # at the last look

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "files_removed": self.files_removed,
            "files_added": self.files_added,
            "conflicts": self.conflicts,
            "small_files": self.small_files,
            "last_error": self.last_error,
        }


@dataclass
class Compactor:
    """Compacts the tables it is asked about, one at a time, in a background thread."""

    store: DeltaStore
    settings: dict[str, Compaction]
    stats: dict[str, CompactionStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._requests: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self, dataset: str) -> None:
        """Look at ``dataset`` soon (a request already pending is not repeated)."""
        if dataset not in self.settings:
            return
        with self._lock:
            if dataset in self._pending:
                return
            self._pending.add(dataset)
        self._requests.put(dataset)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="compactor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the requests made so far, then end the thread."""
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = None

    def run_pending(self) -> None:
        """Handle the requests made so far in this thread (when none is started)."""
        while True:
            try:
                dataset = self._requests.get_nowait()
            except queue.Empty:
                return
            if dataset is not None:
                self._handle(dataset)

    def _work(self) -> None:
        while True:
            dataset = self._requests.get()
            if dataset is None:
                return
            self._handle(dataset)

    def _handle(self, dataset: str) -> None:
        with self._lock:
            self._pending.discard(dataset)
        try:
            self.compact(dataset)
        except Exception as exc:  # the stream must go on whatever the compaction does
            stats = self.stats.setdefault(dataset, CompactionStats())
            stats.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.warning("compaction of %s failed: %s", dataset, stats.last_error)

    def compact(self, dataset: str) -> bool:
        """Compact ``dataset`` if it has enough small files; returns whether it did."""
        from lakeforge.errors import CommitConflict
        from lakeforge.storage.delta import translate_commit_errors

        setting = self.settings[dataset]
        stats = self.stats.setdefault(dataset, CompactionStats())
        if not self.store.exists(dataset):
            return False
        table = self.store.open(dataset)
        sizes = table.get_add_actions(flatten=True).column("size_bytes").to_pylist()
        small = sum(1 for size in sizes if size < setting.target_file_size // 2)
        stats.small_files = small
        if small < setting.min_files:
            return False
        try:
            with translate_commit_errors(dataset):
                metrics = table.optimize.compact(target_size=setting.target_file_size)
        except CommitConflict as exc:
            stats.conflicts += 1
            stats.last_error = str(exc).splitlines()[0]
            return False
        stats.runs += 1
        stats.files_removed += int(metrics.get("numFilesRemoved", 0))
        stats.files_added += int(metrics.get("numFilesAdded", 0))
        stats.last_error = None
        return True
