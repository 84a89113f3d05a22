"""HTTP push: clients POST events to ``/ingest/{dataset}``; each request is answered only
once the batch holding its events is committed (group commit).

``lakeforge stream`` starts the endpoint (``--http HOST:PORT``) when a streaming table has
``source: {kind: http_push}``. A request's body is one JSON object, a JSON array of objects,
or NDJSON (one object per line); a body that is not all valid objects is refused whole
(400, with the bad lines) — nothing of it is stored. Accepted requests wait in the dataset's
:class:`PushBuffer`; the table's micro-batch (its ``trigger``, e.g. ``200ms``) takes every
waiting request into one batch, commits it like any source batch, and only then — in
:meth:`HttpPushSource.committed` — releases the requests: ``200 {"events": n, "batch": b}``.
A batch that fails (the quality gate, a write error) or a stream that stops releases them
with ``503``: nothing of theirs was stored, and the client may send them again.

Exactly once: a client that sends an ``Idempotency-Key`` header gets it remembered in the
batch's committed state (the newest ``dedup_window`` keys); a request repeated with a key
already committed — e.g. after a crash between the commit and the answer — is answered
``200`` with ``"duplicate": true`` and stored nothing again. Without a key, a retry after
such a crash stores the events twice (at least once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lakeforge.sources.base import Source, SourceBatch, SourceStatus

if TYPE_CHECKING:
    import pyarrow as pa

#: Each event's arrival, added as a column.
RECEIVED_COLUMN = "_received_at"


class HttpPushConfig(BaseModel):
    """``source: {kind: http_push}`` (Python ``lf.http_push()``).

    Args:
        max_events_per_batch: a batch takes whole requests up to about this many events.
        max_body_bytes: a larger request is refused (413).
        request_timeout: how long a request waits for its commit before a 503.
        dedup_window: how many committed ``Idempotency-Key`` values are remembered.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["http_push"] = "http_push"
    max_events_per_batch: int = Field(default=100_000, ge=1)
    max_body_bytes: int = Field(default=16 << 20, ge=1024)
    request_timeout: float = Field(default=30.0, gt=0)
    dedup_window: int = Field(default=100_000, ge=0)


@dataclass
class PushRequest:
    """Events of one accepted request, waiting for their batch's commit."""

    events: list[bytes]
    key: str | None
    received: float = field(default_factory=time.time)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: dict[str, Any] = field(default_factory=dict)
    status: int = 0

    def settle(self, status: int, outcome: dict[str, Any]) -> None:
        if not self.done.is_set():
            self.status, self.outcome = status, outcome
            self.done.set()


class PushBuffer:
    """The requests waiting for a dataset's next batch (one per dataset and process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[PushRequest] = []
        self.closed = False

    def submit(self, request: PushRequest) -> bool:
        with self._lock:
            if self.closed:
                return False
            self._waiting.append(request)
            return True

    def waiting(self) -> int:
        with self._lock:
            return sum(len(r.events) for r in self._waiting)

    def take(self, max_events: int) -> list[PushRequest]:
        """Whole requests, oldest first, up to ``max_events`` events (at least one)."""
        with self._lock:
            taken: list[PushRequest] = []
            count = 0
            while self._waiting and (
                not taken or count + len(self._waiting[0].events) <= max_events
            ):
                request = self._waiting.pop(0)
                taken.append(request)
                count += len(request.events)
            return taken

    def close(self, reason: str) -> None:
        """Refuse new requests and release the waiting ones (503)."""
        with self._lock:
            self.closed = True
            waiting, self._waiting = self._waiting, []
        for request in waiting:
            request.settle(503, {"error": reason})


_BUFFERS: dict[str, PushBuffer] = {}
_BUFFERS_LOCK = threading.Lock()


def buffer_of(dataset: str) -> PushBuffer:
    """The process's buffer of ``dataset`` (the endpoint fills it, the source drains it)."""
    with _BUFFERS_LOCK:
        return _BUFFERS.setdefault(dataset, PushBuffer())


def open_buffer(dataset: str) -> PushBuffer:
    """The buffer of ``dataset`` for a new endpoint: a fresh one if the last was closed."""
    with _BUFFERS_LOCK:
        buffer = _BUFFERS.get(dataset)
        if buffer is None or buffer.closed:
            buffer = _BUFFERS[dataset] = PushBuffer()
        return buffer


@dataclass
class PushPosition:
    """The newest committed idempotency keys (oldest first) and the requests committed."""

    keys: list[str] = field(default_factory=list)
    requests: int = 0


class HttpPushSource(Source):
    """Events pushed over HTTP to this process, committed in groups."""

    kind = "http_push"
    replay_refusal = (
        "HTTP push events that could not be read were refused with a 400 and never stored"
    )

    def __init__(self, dataset: str, project_root: Path, config: HttpPushConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self.buffer = buffer_of(dataset)
        self._inflight: list[PushRequest] = []

    def recover(self, committed: Iterable[dict[str, Any]]) -> PushPosition:
        for state in committed:
            if state.get("kind") == self.kind:
                return PushPosition(list(state.get("keys", [])), int(state.get("requests", 0)))
        return PushPosition()

    def fresh(self) -> PushPosition:
        return PushPosition()

    def pending(self, position: Any) -> str | None:
        waiting = self.buffer.waiting()
        return f"{waiting:,} event(s) pushed" if waiting else None

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        pos: PushPosition = position
        seen = set(pos.keys)
        try:
            while True:
                taken = self.buffer.take(self.config.max_events_per_batch)
                if not taken:
                    return
                fresh: list[PushRequest] = []
                for request in taken:
                    if request.key is not None and request.key in seen:
                        request.settle(200, {"events": len(request.events), "duplicate": True})
                    else:
                        fresh.append(request)
                        if request.key is not None:
                            seen.add(request.key)
                if not fresh:
                    continue
                keys = pos.keys + [r.key for r in fresh if r.key is not None]
                window = self.config.dedup_window
                keys = keys[-window:] if window else []
                pos = PushPosition(keys, pos.requests + len(fresh))
                self._inflight = fresh
                events = sum(len(r.events) for r in fresh)
                yield SourceBatch(
                    data=self._table(fresh),
                    state={"kind": self.kind, "keys": keys, "requests": pos.requests},
                    description=f"{len(fresh)} request(s), {events:,} event(s)",
                    units=len(fresh),
                )
                self._inflight = []
        finally:
            # A batch that was not committed (the gate blocked it, a write failed, the
            # stream stopped): its requests stored nothing; the clients may send them again.
            for request in self._inflight:
                request.settle(503, {"error": "not stored: the batch was not committed"})
            self._inflight = []

    def committed(self, state: dict[str, Any]) -> None:
        for request in self._inflight:
            request.settle(200, {"events": len(request.events), "requests": state["requests"]})
        self._inflight = []

    def _table(self, requests: list[PushRequest]) -> pa.Table:
        import pyarrow as pa

        from lakeforge.sources.payloads import MESSAGE_INDEX, PayloadConfig, PayloadDecoder

        payloads = [e for r in requests for e in r.events]
        received = [r.received for r in requests for _ in r.events]
        decoder = PayloadDecoder(PayloadConfig(), self.project_root, self.dataset)
        # Every event was checked when its request was accepted: nothing is rejected here.
        table, _ = decoder.decode(payloads, "http_push", [None] * len(payloads))
        order = table.column(MESSAGE_INDEX).to_pylist()
        table = table.drop_columns([MESSAGE_INDEX])
        stamps = pa.array([received[i] * 1_000_000 for i in order], pa.int64())
        return table.append_column(RECEIVED_COLUMN, stamps.cast(pa.timestamp("us", tz="UTC")))

    def status(self, position: Any) -> SourceStatus:
        pos: PushPosition = position
        return SourceStatus(
            kind=self.kind,
            target=f"POST /ingest/{self.dataset}",
            consumed=pos.requests,
            pending=self.buffer.waiting(),
            details={"idempotency_keys": len(pos.keys)},
        )


def split_events(body: bytes) -> tuple[list[bytes], list[str]]:
    """The events of a request body (a JSON object, an array of objects, or NDJSON), each as
    its own JSON bytes, and the problems found (an empty list when the body is good)."""
    import orjson

    text = body.strip()
    if not text:
        return [], ["empty body"]
    if text[:1] in (b"{", b"["):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None  # maybe NDJSON: several objects, one per line
        else:
            items = value if isinstance(value, list) else [value]
            bad = [
                f"item {i}: not a JSON object"
                for i, v in enumerate(items)
                if not isinstance(v, dict)
            ]
            return ([orjson.dumps(v) for v in items] if not bad else []), bad
    events, problems = [], []
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            problems.append(f"line {number}: invalid JSON ({exc})")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number}: not a JSON object")
            continue
        events.append(line.strip())
    return (events if not problems else []), problems
