"""Alert delivery off the critical path of a long-running process (``lakeforge stream``).

``lakeforge run`` delivers its alerts before it exits (:func:`~.alerts.notify_run`). A
stream must not: a webhook that times out (10 s, two retries) would hold up every
micro-batch for as long as it is down, since a message not delivered stays owed and is
tried again after each run. :class:`AlertDispatcher` records what a micro-batch observed
at once — the alert book in the metadata store is the durable queue — and sends what is
owed from a thread of its own. Wake-ups while it sends collapse into one more pass; what
is still owed when the stream stops is sent by the next run or stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakeforge.scheduling.alert_book import AlertBook
from lakeforge.scheduling.alerts import (
    deliver,
    error_summary,
    report,
    run_alert_observations,
    summarize,
)

if TYPE_CHECKING:
    from lakeforge.execution.results import RunResult
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import Project

log = logging.getLogger(__name__)


class AlertDispatcher:
    """Observes runs synchronously; delivers their alerts in a background thread."""

    def __init__(
        self,
        project: Project,
        metadata: MetadataStore,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.project = project
        self.metadata = metadata
        self.sleep = sleep
        self.book = AlertBook(metadata, project.config.alerts)
        self._wake = threading.Event()
        self._closing = False
        self._run_id: str | None = None  # the latest run observed: it gets the outcome
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._thread = threading.Thread(
            target=self._work, name="lakeforge-alert-dispatch", daemon=True
        )
        self._thread.start()

    def notify(self, result: RunResult) -> None:
        """Record what ``result`` fires or resolves and wake the sender; never raises."""
        if result.dry_run:
            return
        try:
            self.book.observe(run_alert_observations(self.project, result), datetime.now(UTC))
        except Exception as exc:  # alerting must never fail the run it reports on
            report(
                self.metadata, result.run_id, error_summary(exc, f"alerts for run {result.run_id}")
            )
            return
        with self._lock:  # (the sender checks for a wake-up under this lock)
            self._run_id = result.run_id
            self._busy = True
            self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is left to send from the runs observed so far."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float) -> None:
        """Finish the delivery pass in progress (up to ``timeout`` seconds), then stop.
        Messages still owed stay in the alert book for the next run."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "alert delivery still in progress after %.0fs; what is not delivered stays "
                "owed and is sent by the next run",
                timeout,
            )

    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing and not self._pending():
                return
            with self._lock:
                run_id = self._run_id
            try:
                summary: dict[str, Any] = summarize(
                    deliver(self.project, self.book, sleep=self.sleep)
                )
            except Exception as exc:  # keep the thread alive for the next micro-batch
                summary = error_summary(exc, "alert delivery")
            if run_id is not None:
                report(self.metadata, run_id, summary)
            with self._idle:
                if not self._wake.is_set():
                    self._busy = False
                    self._idle.notify_all()
            if self._closing:
                return

    def _pending(self) -> bool:
        with self._lock:
            return self._busy
