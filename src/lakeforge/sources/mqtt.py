"""The MQTT source: messages of MQTT topics (wildcards allowed), exactly once into a table.

The source connects as ``client_id`` with a persistent session (MQTT v5, ``clean_start``
false, a session expiry), subscribes with QoS 1, and acknowledges messages **manually**,
only in :meth:`MqttSource.committed`, after the batch's Delta commit. A message the broker
sent but that was not acknowledged (the run died before or during its commit, or right after
it) is delivered again on the next connection — with the DUP flag, and with the packet id it
had. The session (``mqtt_session.py``) lets the broker hold up to ``max_messages_per_batch``
unacknowledged messages at once.

MQTT has no durable position to store with a batch, so the state carries what is needed to
recognise a message delivered again after it was committed: the identities of the newest
committed messages (a bounded window). A redelivered message whose identity is in the window
is acknowledged and skipped. The identity is

- ``id_field`` given: the value of that field of the decoded payload. Every message with an
  id in the window is skipped, redelivered or not — a producer's own duplicates too;
- otherwise: the packet id with a hash of the topic and payload, checked for redeliveries
  (DUP) only. The broker resends an unacknowledged message with its original packet id, and
  packet ids are not reused while a message is unacknowledged, so two different messages with
  the same content are never taken for one another; a message sent for the first time is
  never a duplicate.

Why a window is enough: acknowledgements are sent in commit order, so the committed messages
the broker may still send again are the newest ones, and there are at most Receive Maximum
(= ``max_messages_per_batch``) of them. The window holds at least that many (``dedup_window``).

``lakeforge run`` reads what is available now: until no message has come for
``idle_seconds`` (or ``max_run_seconds`` have passed, for a producer that never pauses).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import queue
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.broker_batch import Message, assemble
from lakeforge.sources.mqtt_session import NEVER_EXPIRES, Lost, MqttSession, Received
from lakeforge.sources.payloads import MESSAGE_INDEX, PayloadConfig, PayloadDecoder
from lakeforge.sources.tls import TlsConfig, TlsOption

log = logging.getLogger(__name__)

_MAX_PACKET_IDS = 65535  # MQTT packet ids are 16-bit: the window never spans a reuse
_PROBE_TIMEOUT = 2.0  # seconds at most: `pending()` and `status()` must be quick


class MqttConfig(BaseModel):
    """``source: {kind: mqtt, topics: ["plant/+/telemetry"], client_id: bronze-telemetry}``
    in a SQL header, or ``@lf.table(source=lf.mqtt("plant/#", client_id=...))`` in Python.

    Args:
        topics: topic filters (``+`` one level, ``#`` the rest).
        host / port: the broker.
        client_id: the client id, and so the broker's session: unique per dataset, stable.
        qos: 1 (at least once, with redelivery of what was not acknowledged).
        session_expiry_seconds: how long the broker keeps the session (subscriptions and
            queued messages) while no run is connected; none: for ever.
        username / password_env: credentials; the password from the environment.
        payload: ``{format, schema_file, message}`` (``payloads.py``).
        id_field: a payload field that identifies a message (deduplication, see above).
        dedup_window: committed message identities kept in the state (at least
            ``max_messages_per_batch``, the default).
        max_messages_per_batch / max_batch_seconds: a batch ends at whichever comes first.
        idle_seconds: no message for this long: caught up, the run stops.
        max_run_seconds: a run stops reading after this long even if messages keep coming.
        metadata_prefix: prefix of the ``topic`` and ``received_at`` columns.
        timeout: seconds to wait for the broker (connect, subscribe).
        keepalive: MQTT keep-alive, seconds.
        tls: ``true`` or ``{ca_file, cert_file, key_file, verify}``
            (:class:`~lakeforge.sources.tls.TlsConfig`); the default port becomes 8883.
            The certificate must name ``host`` (``server_name`` is not supported here).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["mqtt"] = "mqtt"
    topics: list[str] = Field(min_length=1)

    def __init__(self, topics: str | list[str] | None = None, /, **data: Any) -> None:
        # `lf.mqtt("plant/+/telemetry", client_id="bronze")`: the topic(s) may come first.
        if topics is not None:
            data["topics"] = topics
        super().__init__(**data)

    client_id: str = Field(min_length=1, max_length=256)
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    qos: Literal[1] = 1
    session_expiry_seconds: int | None = Field(default=None, ge=1, lt=NEVER_EXPIRES)
    username: str | None = None
    password_env: str | None = None
    payload: PayloadConfig = Field(default_factory=PayloadConfig)
    id_field: str | None = Field(default=None, min_length=1)
    dedup_window: int | None = Field(default=None, ge=1, le=_MAX_PACKET_IDS)
    max_messages_per_batch: int = Field(default=1000, ge=1, le=_MAX_PACKET_IDS // 2)
    max_batch_seconds: float = Field(default=5.0, gt=0)
    idle_seconds: float = Field(default=1.0, gt=0)
    max_run_seconds: float = Field(default=300.0, gt=0)
    metadata_prefix: str = "_"
    timeout: float = Field(default=5.0, gt=0)
    keepalive: int = Field(default=60, ge=5, le=65535)
    tls: TlsOption = None

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tls") not in (None, False) and "port" not in data:
            data = {**data, "port": 8883}  # MQTT over TLS
        return data

    @field_validator("tls")
    @classmethod
    def _no_server_name(cls, value: TlsConfig | None) -> TlsConfig | None:
        if value is not None and value.server_name is not None:
            raise ValueError(
                "server_name is not supported by the MQTT client: set host: to the name "
                "in the broker's certificate"
            )
        return value

    @field_validator("topics", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("topics")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for topic in value:
            problem = _filter_problem(topic)
            if problem:
                raise ValueError(f"topic {topic!r}: {problem}")
        if len(set(value)) != len(value):
            raise ValueError("topics are listed more than once")
        return value

    @model_validator(mode="after")
    def _window(self) -> MqttConfig:
        if self.dedup_window is not None and self.dedup_window < self.max_messages_per_batch:
            raise ValueError(
                f"dedup_window {self.dedup_window} is below max_messages_per_batch "
                f"{self.max_messages_per_batch}: a whole batch may be delivered again"
            )
        if self.id_field is None and self.window > _MAX_PACKET_IDS // 2:
            # Packet ids repeat after 65,535 deliveries: the window must not span a reuse.
            raise ValueError(
                f"dedup_window {self.window} is too large without id_field (at most "
                f"{_MAX_PACKET_IDS // 2}); set id_field to keep more"
            )
        if self.password_env is not None and self.username is None:
            raise ValueError("password_env needs username")
        return self

    @property
    def window(self) -> int:
        return self.dedup_window or self.max_messages_per_batch


@dataclasses.dataclass
class Position:
    """The identities of the newest committed messages (oldest first), how many messages
    were committed in all, and the topics the session was subscribed to."""

    seen: list[str] = dataclasses.field(default_factory=list)
    messages: int = 0
    topics: list[str] = dataclasses.field(default_factory=list)


class MqttSource(Source):
    """Messages of MQTT topics, acknowledged after each commit, deduplicated on redelivery."""

    kind = "mqtt"
    replay_refusal = (
        "an MQTT source's dead letters are not replayed: each keeps its raw payload (`raw`) "
        "and topic (`source_file`); fix the producer and publish the corrected messages again"
    )

    def __init__(self, dataset: str, project_root: Path, config: MqttConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self._decoder = PayloadDecoder(config.payload, project_root, dataset)
        self._session: MqttSession | None = None
        self._unacked: dict[int, list[tuple[int, int]]] = {}  # batch token → (mid, qos)
        self._metrics: dict[str, Any] = {}

    # -- position -------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> Position:
        for state in committed:  # the newest commit holds the whole position
            if state.get("kind") == self.kind:
                return Position(
                    list(state.get("seen", [])),
                    int(state.get("messages", 0)),
                    list(state.get("topics", [])),
                )
        return Position()

    def fresh(self) -> Position:
        # A broker does not deliver again what was acknowledged: a full refresh would replace
        # the table with only the messages still to come.
        raise SourceError(
            f"{self.dataset}: an MQTT source cannot read again what it has read, so "
            "--full-refresh would replace the table with only the messages still to come",
            dataset=self.dataset,
            hint="run without --full-refresh; to start the table over, delete it first",
        )

    def pending(self, position: Any) -> str | None:
        # A broker cannot be asked what a session has queued without taking the session over
        # (which would cut off a run that is reading): it is polled by each run. Only
        # whether it is reachable is checked, quickly.
        self._probe()
        return "broker polled each run"

    def status(self, position: Any) -> SourceStatus:
        pos: Position = position
        cfg = self.config
        details: dict[str, Any] = {
            "topics": list(cfg.topics),
            "client_id": cfg.client_id,
            "dedup": "id_field " + cfg.id_field if cfg.id_field else "redelivered messages",
            "window": len(pos.seen),
        }
        try:
            self._probe()
        except SourceError as exc:
            details["error"] = str(exc)
        return SourceStatus(
            kind=self.kind,
            target=f"mqtt://{cfg.host}:{cfg.port} {','.join(cfg.topics)}",
            consumed=pos.messages,
            pending=0,
            details=details,
        )

    def metrics(self) -> dict[str, Any]:
        """Of the last :meth:`batches`: redelivered messages skipped, and whether the broker
        still had the session (for the task's ``metrics.source``)."""
        return dict(self._metrics)

    # -- reading --------------------------------------------------------------------------

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        pos: Position = position
        cfg = self.config
        session = MqttSession(
            self.dataset,
            host=cfg.host,
            port=cfg.port,
            client_id=cfg.client_id,
            keepalive=cfg.keepalive,
            timeout=cfg.timeout,
            session_expiry=cfg.session_expiry_seconds or NEVER_EXPIRES,
            receive_maximum=cfg.max_messages_per_batch,
            username=cfg.username,
            password=self._password(),
            tls=None if cfg.tls is None else cfg.tls.context(self.project_root, self.dataset),
        )
        self._session, self._metrics = session, {"duplicates": 0}
        try:
            present = session.open()
            self._metrics["session_present"] = present
            if not present and (pos.messages or pos.topics):
                # The broker lost the session (it expired, or the broker lost its state):
                # messages published while no run was connected were not kept for it.
                self._metrics["session_lost"] = True
                log.warning("%s: %s had no session for client id %s any more: messages "
                            "published while no run was connected are lost", self.dataset,
                            session.where, cfg.client_id)  # fmt: skip
            session.unsubscribe([t for t in pos.topics if t not in cfg.topics])
            session.subscribe(list(cfg.topics), cfg.qos)
            yield from self._read(session, pos)
        finally:
            self._session = None
            self._unacked.clear()
            session.close()

    def committed(self, state: dict[str, Any]) -> None:
        session = self._session
        acks = self._unacked.pop(int(state.get("messages", -1)), None)
        if session is None or not acks:
            return
        for mid, qos in acks:
            session.ack(mid, qos)

    def _read(self, session: MqttSession, pos: Position) -> Iterator[SourceBatch]:
        cfg = self.config
        seen = list(pos.seen)
        window = Counter(seen)
        messages = pos.messages
        started = time.monotonic()
        while True:
            received, caught_up = self._collect(session, started)
            if received:
                data, rejected, rejected_at = self._decode(received)
                keys = self._identities(received, data)
                keep = []
                for i, item in enumerate(received):
                    key = keys[i]
                    duplicate = window[key] > 0 and (key.startswith("=") or item.message.dup)
                    if duplicate:  # committed before: acknowledged now, not read again
                        session.ack(item.message.mid, item.message.qos)
                        self._metrics["duplicates"] += 1
                        continue
                    keep.append(i)
                    seen.append(key)
                    window[key] += 1
                over = len(seen) - cfg.window
                if over > 0:
                    for key in seen[:over]:
                        window[key] -= 1
                    seen = seen[over:]
                    window = +window
                if keep:
                    messages += len(keep)
                    state = {
                        "kind": self.kind,
                        "seen": list(seen),
                        "messages": messages,
                        "topics": list(cfg.topics),
                    }
                    self._unacked[messages] = [
                        (received[i].message.mid, received[i].message.qos) for i in keep
                    ]
                    yield self._batch(received, keep, data, rejected, rejected_at, state)
            if caught_up:
                return

    def _collect(self, session: MqttSession, started: float) -> tuple[list[Received], bool]:
        """The messages of one batch, and whether the run is over after it (caught up: no
        message for ``idle_seconds``, or ``max_run_seconds`` passed)."""
        cfg = self.config
        got: list[Received] = []
        first: float | None = None
        last = time.monotonic()
        while len(got) < cfg.max_messages_per_batch:
            now = time.monotonic()
            if now - started >= cfg.max_run_seconds:
                return got, True
            if first is not None and now - first >= cfg.max_batch_seconds:
                return got, False
            if now - last >= cfg.idle_seconds:
                return got, True
            wait = min(
                cfg.idle_seconds - (now - last),
                cfg.max_run_seconds - (now - started),
                cfg.max_batch_seconds - (now - first) if first is not None else cfg.idle_seconds,
            )
            try:
                item = session.inbox.get(timeout=max(wait, 0.001))
            except queue.Empty:
                continue
            if isinstance(item, Lost):
                raise TransientSourceError(
                    f"{self.dataset}: {session.where} closed the connection: {item.reason}",
                    dataset=self.dataset,
                    hint="is the broker up? Another client connecting with the same "
                    "client_id takes the session over. What was not committed is delivered "
                    "again on the next run",
                )
            got.append(item)
            last = time.monotonic()
            first = first if first is not None else last
        return got, False

    def _decode(self, received: list[Received]) -> tuple[Any, Any, list[int]]:
        """(records with ``__lf_message``, dead letters, message index of each dead letter)."""
        import pyarrow as pa

        cfg = self.config
        messages = [
            Message(r.message.payload or None, f"mqtt://{r.message.topic}") for r in received
        ]
        prefix = cfg.metadata_prefix
        metadata = {
            f"{prefix}topic": pa.array([r.message.topic for r in received], pa.string()),
            f"{prefix}received_at": pa.array(
                [int(r.at * 1_000_000) for r in received], pa.timestamp("us", tz="UTC")
            ),
            MESSAGE_INDEX: pa.array(range(len(received)), pa.int64()),
        }
        data, rejected = assemble(self._decoder, messages, metadata, self.dataset)
        read = set(data.column(MESSAGE_INDEX).to_pylist())
        return data, rejected, [i for i in range(len(received)) if i not in read]

    def _identities(self, received: list[Received], data: Any) -> list[str]:
        """Each message's identity: ``=<hash of id_field>``, or ``<packet id>:<hash>``."""
        import orjson

        keys = [
            f"{r.message.mid}:{_digest(r.message.topic.encode(), r.message.payload, size=6)}"
            for r in received
        ]
        field = self.config.id_field
        if field is not None and field in data.column_names:
            rows = data.column(MESSAGE_INDEX).to_pylist()
            for i, value in zip(rows, data.column(field).to_pylist(), strict=True):
                if value is not None:
                    keys[i] = "=" + _digest(orjson.dumps(value, default=str), size=8)
        return keys

    def _batch(
        self,
        received: list[Received],
        keep: list[int],
        data: Any,
        rejected: Any,
        rejected_at: list[int],
        state: dict[str, Any],
    ) -> SourceBatch:
        import pyarrow as pa
        import pyarrow.compute as pc

        kept = pa.array(keep, pa.int64())
        data = data.filter(pc.is_in(data.column(MESSAGE_INDEX), kept))
        data = data.drop_columns([MESSAGE_INDEX])
        if rejected is not None:
            wanted = set(keep)
            rejected = rejected.filter(pa.array([i in wanted for i in rejected_at]))
            rejected = rejected if rejected.num_rows else None
        topics = len({received[i].message.topic for i in keep})
        description = f"{data.num_rows:,} message(s) on {topics} topic(s)"
        if rejected is not None:
            description += f", {rejected.num_rows:,} dead letter(s)"
        return SourceBatch(data, state, description, units=len(keep), rejected=rejected)

    # -- the broker -----------------------------------------------------------------------

    def _password(self) -> str | None:
        env = self.config.password_env
        if env is None:
            return None
        value = os.environ.get(env)
        if not value:
            raise SourceError(
                f"{self.dataset}: environment variable {env} (the MQTT password) is not set",
                dataset=self.dataset,
                hint=f"export {env}=…",
            )
        return value

    def _probe(self) -> None:
        """Raises TransientSourceError unless the broker accepts a TCP connection, quickly."""
        cfg = self.config
        try:
            probe = min(_PROBE_TIMEOUT, cfg.timeout)
            socket.create_connection((cfg.host, cfg.port), timeout=probe).close()
        except OSError as exc:
            raise TransientSourceError(
                f"{self.dataset}: MQTT broker {cfg.host}:{cfg.port} is not reachable: {exc}",
                dataset=self.dataset,
                hint="is the broker up? (host:, port:)",
            ) from None


def _digest(*parts: bytes, size: int) -> str:
    digest = hashlib.blake2b(digest_size=size)
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _filter_problem(topic: str) -> str | None:
    """What is wrong with an MQTT topic filter, or None."""
    if not topic:
        return "empty"
    if topic.startswith("$share/"):
        return "shared subscriptions are not supported (one client reads the topics)"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level, and the last"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None
