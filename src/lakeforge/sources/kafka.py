"""The Kafka source: messages of one or more topics, read exactly once into a dataset.

The table, not Kafka, holds the position. Each batch's commit carries, in its source
state, the next offset to read of **every** partition of the source's topics; a run
recovers them from the table and reads each partition from there. Offsets are committed
back to the consumer group only after the batch's Delta commit (:meth:`committed`), so
that monitoring tools see the group's lag; they are never read back for a partition the
table knows.

Lakeforge assigns itself every partition of its topics (``assign``, as Flink's and Spark's
Kafka sources do) rather than joining the group as a member (``subscribe``): a member that
is killed keeps its partitions until its session times out (45 s by default; with
librdkafka's mock cluster the next run got no partition for over a minute), and a fresh
group waits out the broker's initial rebalance delay (3 s) on every run. With the table as
the position, the group is not needed to split work; it keeps the committed offsets.

``lakeforge run`` reads what is available now: each partition's high watermark is noted
when the run starts and the run stops once every partition has been read up to it (or to
its end, for a topic whose last offsets are transaction markers). Batches hold at most
``max_messages_per_batch`` messages and close after ``max_batch_seconds``.

Where a partition starts when the table has no offset for it:

- the table has no Kafka position at all (first build, ``--full-refresh``): ``start``:
  ``earliest`` (the oldest message kept) or ``latest``. A ``latest`` start is pinned in the
  group (its offsets committed at once) so that a run that finds nothing to read does not
  move it forward: the next run starts from the group's offsets;
- otherwise (a partition added to a topic, a topic added to ``topics``): ``earliest``.

Rows get ``_topic``, ``_partition``, ``_offset``, ``_key``, ``_timestamp`` (and
``_headers``) next to the decoded payload; messages that cannot be decoded go to the
dead-letter queue with origin ``kafka://<topic>/<partition>`` and the offset as ``line``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.extras import require
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.broker_batch import Message, Payloads, assemble
from lakeforge.sources.payloads import PayloadConfig, PayloadDecoder

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 3.0  # seconds: `pending()` and `status()` must be quick
_POLL = 0.2  # seconds a consume call waits for messages
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# librdkafka properties that hold a secret: only as ${VAR} references in the project.
_SECRET = re.compile(r"password|secret|token|\.key\.pem|sasl\.oauthbearer\.config|jaas")
# Properties Lakeforge sets itself, and the key to use instead.
_RESERVED = {
    "bootstrap.servers": "brokers",
    "metadata.broker.list": "brokers",
    "group.id": "group",
    "auto.offset.reset": "start",
    "enable.auto.commit": None,
    "enable.auto.offset.store": None,
    "enable.partition.eof": None,
}

TP = tuple[str, int]  # (topic, partition)


class KafkaConfig(BaseModel):
    """``source: {kind: kafka, brokers: "b1:9092,b2:9092", topic: orders, ...}`` in a SQL
    header, or ``@lf.table(source=lf.kafka("orders", brokers="b1:9092"))`` in Python.

    Args:
        brokers: the bootstrap servers (``host:port``, a list or a comma-separated string).
        topics / topic: the topic(s) read.
        group: the consumer group the offsets are committed to after each commit (default
            ``lakeforge.<dataset>``), for monitoring; the table holds the position.
        start: where partitions start when the table has no Kafka position yet:
            ``earliest`` (default) or ``latest``.
        payload: ``{format: json|avro|protobuf|text|bytes, schema_file, message}``.
        max_messages_per_batch / max_batch_seconds: a batch ends at whichever comes first.
        key_format: ``text`` (``_key`` as UTF-8 text) or ``bytes``.
        headers: add ``_headers`` (a list of ``{key, value}``, values as bytes).
        metadata_prefix: prefix of the ``topic``, ``partition``, ``offset``, ``key``,
            ``timestamp`` (and ``headers``) columns.
        config: further librdkafka properties (``security.protocol``, ``sasl.mechanisms``
            …); secrets only as ``${VAR}`` references, read when the source runs.
        timeout: seconds to wait for the brokers (metadata, watermarks, a stalled fetch).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["kafka"] = "kafka"
    brokers: list[str] = Field(min_length=1)
    topics: list[str] = Field(min_length=1)

    def __init__(self, topics: str | list[str] | None = None, /, **data: Any) -> None:
        # `lf.kafka("orders", brokers="localhost:9092")`: the topic(s) may come first.
        if topics is not None:
            data["topics"] = topics
        super().__init__(**data)

    group: str | None = Field(default=None, min_length=1)
    start: Literal["earliest", "latest"] = "earliest"
    payload: PayloadConfig = Field(default_factory=PayloadConfig)
    max_messages_per_batch: int = Field(default=10_000, ge=1)
    max_batch_seconds: float = Field(default=5.0, gt=0)
    key_format: Literal["text", "bytes"] = "text"
    headers: bool = False
    metadata_prefix: str = "_"
    config: dict[str, str | int | float | bool] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _topic_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "topic" in data:
            if "topics" in data:
                raise ValueError("give topic or topics, not both")
            data = {**data, "topics": data["topic"]}
            del data["topic"]
        return data

    @field_validator("brokers", "topics", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("topics")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("topics are listed more than once")
        return value

    @field_validator("config")
    @classmethod
    def _properties(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if key in _RESERVED:
                instead = _RESERVED[key]
                raise ValueError(
                    f"config {key!r} is set by Lakeforge"
                    + (f": use the source's {instead!r} key" if instead else "")
                )
            if _SECRET.search(key) and not _VAR.fullmatch(str(item).strip()):
                raise ValueError(
                    f"config {key!r} is a secret: give it as a reference to an environment "
                    "variable (${VAR}), not its value"
                )
        return value

    def resolved(self, dataset: str) -> dict[str, Any]:
        """``config`` with its ``${VAR}`` references read from the environment."""

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise SourceError(
                    f"{dataset}: Kafka config refers to ${{{name}}}, which is not set",
                    dataset=dataset,
                    hint=f"export {name}=…",
                )
            return os.environ[name]

        return {k: _VAR.sub(lookup, v) if isinstance(v, str) else v for k, v in self.config.items()}


@dataclasses.dataclass
class Position:
    """The next offset to read of each partition the table knows; messages committed in
    all; messages that expired (retention) before they were read; ``refresh``: a
    ``--full-refresh`` (``start`` applies anew, the group's offsets are not used)."""

    offsets: dict[TP, int] = dataclasses.field(default_factory=dict)
    messages: int = 0
    expired: int = 0
    refresh: bool = False


class KafkaSource(Source):
    """Messages of Kafka topics; offsets in the table, committed to the group after it."""

    kind = "kafka"
    replay_refusal = (
        "a Kafka source's dead letters are not replayed: each keeps its raw payload (`raw`), "
        "partition (`source_file`) and offset (`line`); fix the producer and publish the "
        "corrected messages again, or read them from the topic while it keeps them"
    )

    def __init__(self, dataset: str, project_root: Path, config: KafkaConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self.group = config.group or f"lakeforge.{dataset}"
        self._decoder = PayloadDecoder(config.payload, project_root, dataset)
        self._consumer: Any = None  # while `batches` runs: the client `committed` commits on
        self._metrics: dict[str, Any] = {}
        self._errors: list[str] = []

    # -- position -------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> Position:
        for state in committed:  # the newest commit holds the whole position
            if state.get("kind") == self.kind:
                offsets = {
                    (topic, int(part)): int(off)
                    for topic, parts in state.get("offsets", {}).items()
                    for part, off in parts.items()
                }
                return Position(
                    offsets, int(state.get("messages", 0)), int(state.get("expired", 0))
                )
        return Position()

    def fresh(self) -> Position:
        return Position(refresh=True)

    def pending(self, position: Any) -> str | None:
        consumer = self._open(self._probe_timeout)
        try:
            marks = self._watermarks(consumer, self._probe_timeout)
            starts = self._starts(consumer, position, marks, self._probe_timeout, pin=False)
        finally:
            consumer.close()
        lag = {tp: marks[tp][1] - starts[tp] for tp in marks}
        if past := [f"{t}/{p}" for (t, p), v in sorted(lag.items()) if v < 0]:
            return f"read past the end of {', '.join(past)} (see the run's error)"
        total = sum(v for v in lag.values() if v > 0)
        if not total:
            return None
        parts = sum(1 for v in lag.values() if v > 0)
        return f"{total:,} new message(s) in {parts} partition(s)"

    def status(self, position: Any) -> SourceStatus:
        pos: Position = position
        cfg = self.config
        details: dict[str, Any] = {
            "brokers": ",".join(cfg.brokers),
            "topics": list(cfg.topics),
            "group": self.group,
            "offsets": _by_topic(pos.offsets),
            "expired": pos.expired,
        }
        pending = 0
        try:
            consumer = self._open(self._probe_timeout)
            try:
                marks = self._watermarks(consumer, self._probe_timeout)
                starts = self._starts(consumer, pos, marks, self._probe_timeout, pin=False)
            finally:
                consumer.close()
            lag = {tp: max(0, marks[tp][1] - starts[tp]) for tp in marks}
            details["lag"] = _by_topic(lag)
            pending = sum(lag.values())
        except SourceError as exc:
            details["error"] = str(exc)
        return SourceStatus(
            kind=self.kind,
            target=f"kafka://{cfg.brokers[0]} {','.join(cfg.topics)}",
            consumed=pos.messages,
            pending=pending,
            details=details,
        )

    def metrics(self) -> dict[str, Any]:
        """Lag per partition (high watermark − next offset) when the last :meth:`batches`
        ended, and their sum (for the task's ``metrics.source``)."""
        return dict(self._metrics)

    # -- the client -----------------------------------------------------------------------

    @property
    def _probe_timeout(self) -> float:
        return min(_PROBE_TIMEOUT, self.config.timeout)

    def _kafka(self) -> Any:
        return require("confluent_kafka")

    def _open(self, timeout: float) -> Any:
        """A consumer of the group (not subscribed: partitions are assigned explicitly)."""
        kafka = self._kafka()
        self._errors = []

        def on_error(error: Any) -> None:
            self._errors.append(str(error))

        conf: dict[str, Any] = {
            "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)),
            "fetch.wait.max.ms": 100,
            "logger": _librdkafka_log(),
            "log.connection.close": False,
            **self.config.resolved(self.dataset),
            "bootstrap.servers": ",".join(self.config.brokers),
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # Only for offsets out of range (expired): where each partition starts is set
            # explicitly from the table.
            "auto.offset.reset": "earliest",
            "error_cb": on_error,
        }
        try:
            return kafka.Consumer(conf)
        except kafka.KafkaException as exc:
            raise SourceError(
                f"{self.dataset}: invalid Kafka client config: {exc.args[0].str()}",
                dataset=self.dataset,
                hint="check the source's config: (librdkafka properties)",
            ) from None

    def _unreachable(self, what: str, exc: Any = None) -> TransientSourceError:
        detail = exc.args[0].str() if exc is not None and exc.args else "timed out"
        seen = f" ({self._errors[-1]})" if self._errors else ""
        return TransientSourceError(
            f"{self.dataset}: Kafka at {','.join(self.config.brokers)}: {what}: {detail}{seen}",
            dataset=self.dataset,
            hint="check the source's brokers: and that the cluster is reachable",
        )

    def _watermarks(self, consumer: Any, timeout: float) -> dict[TP, tuple[int, int]]:
        """(low, high) watermark of every partition of the source's topics."""
        kafka = self._kafka()
        try:
            meta = consumer.list_topics(timeout=timeout)
        except kafka.KafkaException as exc:
            raise self._unreachable("no metadata", exc) from None
        marks: dict[TP, tuple[int, int]] = {}
        for topic in self.config.topics:
            found = meta.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                known = ", ".join(sorted(t for t in meta.topics if not t.startswith("__")))
                raise SourceError(
                    f"{self.dataset}: Kafka topic {topic!r} does not exist on "
                    f"{','.join(self.config.brokers)}",
                    dataset=self.dataset,
                    hint=f"topics there: {known or 'none'}",
                )
            for part in sorted(found.partitions):
                tp = kafka.TopicPartition(topic, part)
                try:
                    low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
                except kafka.KafkaException as exc:
                    raise self._unreachable(f"no watermarks of {topic}/{part}", exc) from None
                marks[(topic, part)] = (low, high)
        return marks

    def _starts(
        self,
        consumer: Any,
        pos: Position,
        marks: dict[TP, tuple[int, int]],
        timeout: float,
        pin: bool,
    ) -> dict[TP, int]:
        """The offset each partition is read from (see the module's docstring). ``pin``:
        commit a ``latest`` start to the group, so the next run starts there too."""
        kafka = self._kafka()
        known = {} if pos.refresh else pos.offsets
        starts: dict[TP, int] = {}
        unknown = [tp for tp in marks if tp not in known]
        group: dict[TP, int] = {}
        if unknown and not known and self.config.start == "latest" and not pos.refresh:
            try:
                found = consumer.committed(
                    [kafka.TopicPartition(t, p) for t, p in unknown], timeout=timeout
                )
            except kafka.KafkaException as exc:
                raise self._unreachable("no committed offsets of the group", exc) from None
            group = {(f.topic, f.partition): f.offset for f in found if f.offset >= 0}
        for tp, (low, high) in marks.items():
            if tp in known:
                starts[tp] = known[tp]
            elif known or self.config.start == "earliest":
                starts[tp] = low
            else:
                starts[tp] = group.get(tp, high)
        pinned = [tp for tp in unknown if tp not in group and not known]
        if pin and pinned and self.config.start == "latest":
            self._commit_offsets(consumer, {tp: starts[tp] for tp in pinned})
        return starts

    def _commit_offsets(self, consumer: Any, offsets: dict[TP, int]) -> None:
        kafka = self._kafka()
        try:
            consumer.commit(
                offsets=[kafka.TopicPartition(t, p, off) for (t, p), off in offsets.items()],
                asynchronous=False,
            )
        except kafka.KafkaException as exc:
            # Monitoring only: the table holds the position.
            log.warning("%s: committing offsets to group %s failed: %s", self.dataset,
                        self.group, exc.args[0].str())  # fmt: skip

    # -- reading --------------------------------------------------------------------------

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        pos: Position = position
        consumer = self._open(self.config.timeout)
        self._consumer, self._metrics = consumer, {}
        try:
            yield from self._read(consumer, pos)
        finally:
            self._consumer = None
            consumer.close()

    def committed(self, state: dict[str, Any]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        offsets = {
            (topic, int(part)): int(off)
            for topic, parts in state.get("offsets", {}).items()
            for part, off in parts.items()
        }
        self._commit_offsets(consumer, offsets)

    def _read(self, consumer: Any, pos: Position) -> Iterator[SourceBatch]:
        kafka = self._kafka()
        cfg = self.config
        timeout = cfg.timeout
        marks = self._watermarks(consumer, timeout)
        read = self._starts(consumer, pos, marks, timeout, pin=True)
        known = {} if pos.refresh else dict(pos.offsets)
        expired = pos.expired
        for tp, (low, _) in marks.items():
            if read[tp] < low:  # deleted by retention before it was read
                log.warning("%s: %d message(s) of %s/%d expired before they were read",
                            self.dataset, low - read[tp], *tp)  # fmt: skip
                expired += low - read[tp]
                read[tp] = low
        ends = {tp: high for tp, (_, high) in marks.items()}
        if past := sorted(tp for tp in marks if read[tp] > ends[tp]):
            (topic, part), *_ = past
            raise SourceError(
                f"{self.dataset}: the table has read {topic}/{part} up to offset "
                f"{read[(topic, part)]}, past the partition's end ({ends[(topic, part)]}): the "
                "topic was deleted and created again, or lost messages it had acknowledged",
                dataset=self.dataset,
                hint=f"`lakeforge run --full-refresh {self.dataset}` reads it again from `start`",
            )
        active = {tp for tp in marks if read[tp] < ends[tp]}
        messages = 0 if pos.refresh else pos.messages
        if active:
            consumer.assign([kafka.TopicPartition(t, p, read[(t, p)]) for t, p in sorted(active)])
        buffer: list[Any] = []
        started = progress = time.monotonic()
        while active:
            room = cfg.max_messages_per_batch - len(buffer)
            got = consumer.consume(min(room, 1000), timeout=_POLL)
            for msg in got:
                tp = (msg.topic(), msg.partition())
                error = msg.error()
                if error is not None:
                    if error.code() == kafka.KafkaError._PARTITION_EOF:
                        if tp in active:
                            # The end, where the high watermark is past the last message
                            # (transaction markers): read up to it.
                            read[tp] = max(read[tp], msg.offset())
                            self._done(consumer, active, tp)
                        continue
                    if error.fatal() or not (error.retriable() or _is_transient(kafka, error)):
                        raise SourceError(
                            f"{self.dataset}: Kafka: {error.str()}", dataset=self.dataset
                        )
                    self._errors.append(error.str())
                    continue
                offset = msg.offset()
                if tp not in active or offset < read[tp] or offset >= ends[tp]:
                    continue  # read already, or produced after the run started
                buffer.append(msg)
                read[tp] = offset + 1
                progress = time.monotonic()
                if read[tp] >= ends[tp]:
                    self._done(consumer, active, tp)
            now = time.monotonic()
            full = len(buffer) >= cfg.max_messages_per_batch
            if buffer and (full or not active or now - started >= cfg.max_batch_seconds):
                messages += len(buffer)
                state = _state(known | read, messages, expired)
                yield self._batch(buffer, state)
                buffer, started = [], time.monotonic()
                progress = max(progress, started)
            elif active and not got and now - progress > timeout:
                waiting = ", ".join(f"{t}/{p}" for t, p in sorted(active))
                raise self._unreachable(f"no message from {waiting} for {timeout:g}s")
        self._metrics = self._lag(consumer, read)

    def _done(self, consumer: Any, active: set[TP], tp: TP) -> None:
        active.discard(tp)
        consumer.pause([self._kafka().TopicPartition(*tp)])

    def _lag(self, consumer: Any, read: dict[TP, int]) -> dict[str, Any]:
        try:
            marks = self._watermarks(consumer, self._probe_timeout)
        except SourceError:
            return {}
        lag = {tp: max(0, high - read.get(tp, low)) for tp, (low, high) in marks.items()}
        return {"lag": _by_topic(lag), "lag_total": sum(lag.values())}

    def _batch(self, buffer: list[Any], state: dict[str, Any]) -> SourceBatch:
        import pyarrow as pa

        cfg = self.config
        p = cfg.metadata_prefix
        messages = Payloads(
            [m.value() for m in buffer],
            lambda i: Message(
                buffer[i].value(),
                f"kafka://{buffer[i].topic()}/{buffer[i].partition()}",
                buffer[i].offset(),
            ),
        )
        keys = [m.key() for m in buffer]
        stamps = [m.timestamp() for m in buffer]
        metadata: dict[str, pa.Array] = {
            f"{p}topic": pa.array([m.topic() for m in buffer], pa.string()),
            f"{p}partition": pa.array([m.partition() for m in buffer], pa.int32()),
            f"{p}offset": pa.array([m.offset() for m in buffer], pa.int64()),
            f"{p}key": (
                pa.array([None if k is None else k.decode("utf-8", "replace") for k in keys])
                if cfg.key_format == "text"
                else pa.array(keys, pa.binary())
            ),
            f"{p}timestamp": pa.array(
                [ms if kind != 0 else None for kind, ms in stamps], pa.timestamp("ms", tz="UTC")
            ),
        }
        if cfg.headers:
            header_type = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
            metadata[f"{p}headers"] = pa.array(
                [[{"key": k, "value": v} for k, v in m.headers() or []] for m in buffer],
                header_type,
            )
        data, rejected = assemble(self._decoder, messages, metadata, self.dataset)
        parts = len({(m.topic(), m.partition()) for m in buffer})
        description = f"{len(buffer):,} message(s) from {parts} partition(s)"
        if rejected is not None:
            description += f", {rejected.num_rows:,} dead letter(s)"
        return SourceBatch(data, state, description, units=len(buffer), rejected=rejected)


def _librdkafka_log() -> logging.Logger:
    """librdkafka's own log (one line per failed connection attempt, at error level): quiet
    unless its logger's level is set; what matters reaches the errors through error_cb."""
    logger = logging.getLogger("lakeforge.sources.kafka.librdkafka")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)
    return logger


def _is_transient(kafka: Any, error: Any) -> bool:
    codes = {kafka.KafkaError._TRANSPORT, kafka.KafkaError._ALL_BROKERS_DOWN}
    codes |= {kafka.KafkaError._TIMED_OUT, kafka.KafkaError.NOT_LEADER_FOR_PARTITION}
    return error.code() in codes


def _by_topic(values: dict[TP, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (topic, part), value in sorted(values.items()):
        out.setdefault(topic, {})[str(part)] = value
    return out


def _state(offsets: dict[TP, int], messages: int, expired: int) -> dict[str, Any]:
    return {
        "kind": "kafka",
        "offsets": _by_topic(offsets),
        "messages": messages,
        "expired": expired,
    }
