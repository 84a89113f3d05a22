"""``lakeforge worker``: take runs from the queue and execute them, until stopped.

Several workers may run at once — threads of one process, processes on one machine, or
machines sharing a PostgreSQL metadata store. Each claims one item at a time
(``scheduling/queue.py``), heartbeats it from a background thread while the run executes,
and records the run id and outcome on the item. A worker stopped with SIGINT/SIGTERM
finishes the run it is executing first; one that is killed leaves its item claimed until
another worker sees the heartbeat is old and queues it again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from lakeforge.errors import LakeforgeError
from lakeforge.scheduling.queue import QueueItem, RunQueue

if TYPE_CHECKING:
    from lakeforge.execution.results import RunListener, RunResult
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import Project

HEARTBEAT_SECONDS = 5.0
STALE_AFTER = timedelta(seconds=60)


def worker_name() -> str:
    """``host:pid:random`` — unique among the workers of a queue."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    items: list[tuple[int, str, str | None]] = field(default_factory=list)  # id, status, run


class Worker:
    """Executes queued runs of one project.

    Args:
        pools: pool → capacity over all workers (``pools:`` of lakeforge.yml by default).
        only_pools: take items of these pools only.
        stale_after: how old a claimed item's heartbeat may get before it is queued again.
    """

    def __init__(
        self,
        project: Project,
        *,
        metadata: MetadataStore | None = None,
        name: str | None = None,
        pools: dict[str, int] | None = None,
        only_pools: list[str] | None = None,
        poll_seconds: float = 1.0,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_after: timedelta = STALE_AFTER,
        listener: RunListener | None = None,
        on_item: Callable[[QueueItem, RunResult | None], None] | None = None,
    ) -> None:
        if metadata is None:
            from lakeforge.metadata.store import MetadataStore

            metadata = MetadataStore(project.metadata_url)
        self.project = project
        self.metadata = metadata
        self.queue = RunQueue(metadata)
        self.name = name or worker_name()
        self.pools = dict(project.config.pools) if pools is None else pools
        self.only_pools = only_pools
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_after = stale_after
        self.listener = listener
        self.on_item = on_item
        self.stats = WorkerStats()

    def run(
        self, stop: threading.Event, *, max_items: int | None = None, once: bool = False
    ) -> WorkerStats:
        """Work until ``stop`` is set, ``max_items`` were run, or (``once``) the queue is
        empty."""
        while not stop.is_set():
            if max_items is not None and self.stats.done + self.stats.failed >= max_items:
                break
            item = self.run_one()
            if item is None:
                if once:
                    break
                stop.wait(self.poll_seconds)
        return self.stats

    def run_one(self) -> QueueItem | None:
        """Claim and execute one item; None when nothing is claimable now."""
        self.queue.release_stale(self.stale_after)
        item = self.queue.claim(self.name, pools=self.pools, only_pools=self.only_pools)
        if item is None:
            return None
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(item.id, beat_stop), name="lakeforge-heartbeat",
            daemon=True,
        )  # fmt: skip
        beat.start()
        result: RunResult | None = None
        try:
            result = self._execute(item)
            status = "done" if result.ok else "failed"
            error = None if result.ok else _first_error(result)
            self.queue.finish(item.id, status=status, run_id=result.run_id, error=error)
        except LakeforgeError as exc:
            status = "failed"
            self.queue.finish(item.id, status=status, error=str(exc))
        except Exception as exc:  # a bug: recorded on the item, the worker goes on
            status = "failed"
            self.queue.finish(item.id, status=status, error=f"{type(exc).__name__}: {exc}")
        finally:
            beat_stop.set()
            beat.join()
        if status == "done":
            self.stats.done += 1
        else:
            self.stats.failed += 1
        self.stats.items.append((item.id, status, result.run_id if result else None))
        if self.on_item is not None:
            self.on_item(item, result)
        return item

    def _execute(self, item: QueueItem) -> RunResult:
        from lakeforge.execution.executor import Runner

        runner = Runner(self.project, metadata=self.metadata, listener=self.listener)
        backfill = {k: set(v) for k, v in (item.backfill or {}).items()}
        return runner.run(
            item.selection,
            full_refresh=item.full_refresh,
            backfill=backfill or None,
            options={"queue_item": item.id, "worker": self.name, "reason": item.reason},
        )

    def _heartbeat(self, item_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_seconds):
            try:
                self.queue.heartbeat(item_id, self.name)
            except LakeforgeError:
                time.sleep(0)  # the store is briefly unreachable: the next beat retries


def _first_error(result: RunResult) -> str:
    for task in result.tasks:
        if task.error is not None:
            return f"{task.dataset}: {task.error}"
    return "the run failed"
