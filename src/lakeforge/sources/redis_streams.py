"""The Redis Streams source: entries of one or more streams, read through a consumer group.

The source reads with ``XREADGROUP`` as one consumer of a group that belongs to the dataset
(``lakeforge.<dataset>`` unless ``group:`` says otherwise), created with ``XGROUP CREATE …
MKSTREAM`` at ``start`` (``0``: everything the stream holds, ``$``: only what comes after)
when it does not exist. A batch holds at most ``max_messages_per_batch`` entries; its state
is **the id of the newest entry of each stream read so far**, committed with the batch.

Exactly once: entries are acknowledged (``XACK``) only in :meth:`committed`, after the
batch's Delta commit. The Delta state, not the group, is the truth:

- an entry with an id at or below the committed id of its stream is in the table already: it
  is acknowledged and skipped wherever it turns up (this consumer's pending list after a
  crash between a commit and its ``XACK``, or a group re-created behind the table);
- an entry above it is read, in id order: first the group's pending entries — those of
  other consumers of the group are claimed (``XAUTOCLAIM``) first, so an entry delivered to
  a consumer that is gone is not lost — then new ones (``>``);
- a group that is missing is created at the committed id; one whose last delivered id is
  behind it is moved there (``XGROUP SETID``).

``lakeforge run`` reads what is available now: the newest id of each stream is noted when
the run starts, and the run stops once it has read up to it (entries added later are read
by the next run). Rows get ``_stream``, ``_id`` and ``_timestamp`` (the id's milliseconds).
Entries that cannot be decoded go to the dead-letter queue with origin ``redis://<stream>``,
the id's milliseconds as ``line`` and the whole id in front of the error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.extras import require
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.broker_batch import Message, assemble
from lakeforge.sources.payloads import PayloadConfig, PayloadDecoder
from lakeforge.sources.tls import CLOSED_DURING_TLS, TlsOption, tls_failure

log = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_ENTRY_ID = re.compile(r"^\d+(-\d+)?$")
_ACK_CHUNK = 1000
_PROBE_TIMEOUT = 2.0  # seconds: `pending()` and `status()` must be quick


class RedisPayload(PayloadConfig):
    """``payload: {format: json, field: data}``: how an entry becomes a record.

    Args:
        field: the entry field holding the payload, decoded as ``format``; none (default):
            every field of the entry is a text column.
    """

    field: str | None = None

    @model_validator(mode="after")
    def _format_needs_field(self) -> RedisPayload:
        if self.field is None and self.format != "json":
            raise ValueError(
                f"payload format {self.format} needs field (the entry field holding the "
                "payload); without field, every field of an entry is a text column"
            )
        return self


class RedisStreamsConfig(BaseModel):
    """``source: {kind: redis_streams, streams: [orders], ...}`` in a SQL header, or
    ``@lf.table(source=lf.redis_streams("orders", ...))`` in Python.

    Args:
        streams: the stream keys read (one or more).
        url / url_env: the server (``redis://host:6379/0``, ``rediss://`` for TLS), or the
            environment variable holding its URL (for a URL with a password); default
            ``redis://127.0.0.1:6379/0``.
        group: the consumer group (default ``lakeforge.<dataset>``); it belongs to the
            dataset: do not share it with other readers.
        consumer: this reader's name in the group.
        start: where a new group starts: ``0`` (every entry the stream holds), ``$`` (entries
            added from now on) or an entry id.
        payload: ``{format, field, schema_file, message}``: see :class:`RedisPayload`.
        max_messages_per_batch / max_batch_seconds: a batch ends at whichever comes first.
        metadata_prefix: prefix of the ``stream``, ``id`` and ``timestamp`` columns.
        timeout: seconds to wait for the server (connect and each command).
        tls: ``true`` or ``{ca_file, cert_file, key_file, verify}``
            (:class:`~lakeforge.sources.tls.TlsConfig`): connect with TLS (a ``redis://``
            URL is taken as ``rediss://``); the certificate must name the URL's host.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["redis_streams"] = "redis_streams"
    streams: list[str] = Field(min_length=1)

    def __init__(self, streams: str | list[str] | None = None, /, **data: Any) -> None:
        # `lf.redis_streams("orders", group="bronze")`: the stream(s) may come first.
        if streams is not None:
            data["streams"] = streams
        super().__init__(**data)

    url: str | None = None
    url_env: str | None = None
    group: str | None = Field(default=None, min_length=1)
    consumer: str = Field(default="lakeforge", min_length=1)
    start: str = "0"
    payload: RedisPayload = Field(default_factory=RedisPayload)
    max_messages_per_batch: int = Field(default=10_000, ge=1)
    max_batch_seconds: float = Field(default=5.0, gt=0)
    metadata_prefix: str = "_"
    timeout: float = Field(default=5.0, gt=0)
    tls: TlsOption = None

    @field_validator("streams", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("streams")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("a stream name must not be empty")
        if len(set(value)) != len(value):
            raise ValueError("streams are listed more than once")
        return value

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        if value not in ("0", "$") and not _ENTRY_ID.match(value):
            raise ValueError(f"start {value!r}: use 0, $ or an entry id (1732000000000-0)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"url {shown_url(value)!r} must start with redis://, rediss:// "
                             "or unix://")  # fmt: skip
        if parts.password:
            raise ValueError(
                "url holds a password: put the whole URL in an environment variable and "
                "name it in url_env"
            )
        return value

    @model_validator(mode="after")
    def _one_url(self) -> RedisStreamsConfig:
        if self.url is not None and self.url_env is not None:
            raise ValueError("give url or url_env, not both")
        if self.tls is not None:
            if self.tls.server_name is not None:
                raise ValueError(
                    "tls: server_name is not supported by the Redis client: use the name in "
                    "the server's certificate as the URL's host"
                )
            if self.url is not None and self.url.startswith("unix://"):
                raise ValueError("tls: a unix:// socket does not speak TLS")
        return self

    def resolved_url(self, dataset: str) -> str:
        if self.url_env is None:
            return self.url or DEFAULT_URL
        value = os.environ.get(self.url_env)
        if not value:
            raise SourceError(
                f"{dataset}: environment variable {self.url_env} (the Redis URL) is not set",
                dataset=dataset,
                hint=f"export {self.url_env}=redis://:password@host:6379/0",
            )
        return value


@dataclasses.dataclass
class Position:
    """The newest committed entry id of each stream; entries committed in all; ``refresh``:
    ``--full-refresh`` (the group starts again from ``start``, or from ``0``)."""

    ids: dict[str, str] = dataclasses.field(default_factory=dict)
    entries: int = 0
    refresh: bool = False


@dataclasses.dataclass
class _Entry:
    stream: str
    id: bytes
    fields: dict[bytes, bytes]


class RedisStreamsSource(Source):
    """Entries of Redis streams, through a consumer group, acknowledged after each commit."""

    kind = "redis_streams"
    replay_refusal = (
        "a Redis Streams source's dead letters are not replayed: each keeps its raw payload "
        "(`raw`) and entry id (in `error`); fix the producer and add the corrected entries "
        "to the stream again"
    )

    def __init__(self, dataset: str, project_root: Path, config: RedisStreamsConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self.group = config.group or f"lakeforge.{dataset}"
        self._decoder = PayloadDecoder(config.payload, project_root, dataset)
        self._client: Any = None  # while `batches` runs: the connection `committed` acks on
        self._unacked: dict[str, dict[str, list[bytes]]] = {}  # batch token → stream → ids
        self._metrics: dict[str, Any] = {}

    # -- position -------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> Position:
        for state in committed:  # the newest commit holds the whole position
            if state.get("kind") == self.kind:
                return Position(dict(state.get("ids", {})), int(state.get("entries", 0)))
        return Position()

    def fresh(self) -> Position:
        return Position(refresh=True)

    def pending(self, position: Any) -> str | None:
        pos: Position = position
        client = self._connect(min(_PROBE_TIMEOUT, self.config.timeout))
        try:
            reasons: list[str] = []
            for stream, group in self._groups(client).items():
                committed = pos.ids.get(stream)
                if group is None:
                    if self._unread_without_group(client, stream, committed):
                        reasons.append(f"new entries in {stream} (group not created yet)")
                    continue
                lag, unacked = _lag(group), int(group["pending"])
                if lag is None and _newer(client, stream, group):
                    reasons.append(f"new entries in {stream}")
                elif lag:
                    reasons.append(f"{lag:,} new entr(ies) in {stream}")
                if unacked:
                    reasons.append(f"{unacked:,} unacknowledged entr(ies) in {stream}")
            return "; ".join(reasons) or None
        except self._redis().RedisError as exc:
            raise self._failure(exc, "could not be asked what is new") from None
        finally:
            client.close()

    def status(self, position: Any) -> SourceStatus:
        pos: Position = position
        cfg = self.config
        details: dict[str, Any] = {
            "streams": list(cfg.streams),
            "group": self.group,
            "consumer": cfg.consumer,
            "ids": {s: pos.ids[s] for s in cfg.streams if s in pos.ids},
        }
        pending = 0
        try:
            client = self._connect(min(_PROBE_TIMEOUT, self.config.timeout))
            try:
                lags, unacked = self._backlog(client)
            finally:
                client.close()
            details["lag"], details["unacknowledged"] = lags, unacked
            pending = sum(v or 0 for v in lags.values()) + sum(unacked.values())
        except (SourceError, self._redis().RedisError) as exc:
            details["error"] = str(exc)
        return SourceStatus(
            kind=self.kind,
            target=f"{self._shown_url()} {','.join(cfg.streams)}",
            consumed=pos.entries,
            pending=pending,
            details=details,
        )

    def metrics(self) -> dict[str, Any]:
        """The group's lag (entries not delivered yet; None where Redis cannot count it) per
        stream and in total, and its unacknowledged entries, when the last :meth:`batches`
        ended (for the task's ``metrics.source``)."""
        return dict(self._metrics)

    # -- reading --------------------------------------------------------------------------

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        pos: Position = position
        redis = self._redis()
        client = self._connect(self.config.timeout)
        self._client, self._metrics = client, {}
        try:
            yield from self._read(client, pos)
            lags, unacked = self._backlog(client)
            known = [v for v in lags.values() if v is not None]
            total = sum(known) if len(known) == len(lags) else None
            self._metrics = {"lag": lags, "lag_total": total, "unacknowledged": unacked}
        except redis.RedisError as exc:
            raise self._failure(exc, "failed while reading") from None
        finally:
            self._client = None
            self._unacked.clear()
            client.close()

    def committed(self, state: dict[str, Any]) -> None:
        acks = self._unacked.pop(_token(state), None)
        client = self._client
        if not acks or client is None:
            return
        try:
            self._ack(client, acks)
        except self._redis().RedisError as exc:
            # The batch is in the table: its entries stay pending in the group, and the
            # next run acknowledges them when it finds them at or below the committed ids.
            log.warning("%s: XACK after the commit failed (%s); the next run acks", self.dataset,
                        exc)  # fmt: skip

    def _read(self, client: Any, pos: Position) -> Iterator[SourceBatch]:
        cfg = self.config
        committed = {} if pos.refresh else {s: pos.ids[s] for s in cfg.streams if s in pos.ids}
        ends: dict[str, tuple[int, int]] = {}
        for stream in cfg.streams:
            self._prepare(client, stream, committed.get(stream), pos.refresh)
            ends[stream] = _parse(client.xinfo_stream(stream)["last-generated-id"])
            self._claim_orphans(client, stream)
        # "pending": this consumer's pending entries, from `cursor`; "new": `>`; "done".
        phase = dict.fromkeys(cfg.streams, "pending")
        cursor: dict[str, bytes | str] = dict.fromkeys(cfg.streams, "0")
        entries = pos.entries
        while any(p != "done" for p in phase.values()):
            batch: list[_Entry] = []
            skipped: dict[str, list[bytes]] = {}
            started = time.monotonic()
            while len(batch) < cfg.max_messages_per_batch:
                if time.monotonic() - started >= cfg.max_batch_seconds:
                    break
                active = [s for s in cfg.streams if phase[s] != "done"]
                if not active:
                    break
                count = max(1, (cfg.max_messages_per_batch - len(batch)) // len(active))
                ask = {s: cursor[s] if phase[s] == "pending" else ">" for s in active}
                reply = client.xreadgroup(self.group, cfg.consumer, ask, count=count)
                got = {_text(name): items for name, items in reply or []}
                for stream in active:
                    items = got.get(stream) or []
                    if not items:
                        phase[stream] = "new" if phase[stream] == "pending" else "done"
                        continue
                    if phase[stream] == "pending":
                        cursor[stream] = items[-1][0]
                    elif _parse(items[-1][0]) >= ends[stream]:
                        phase[stream] = "done"  # read up to where the stream ended at start
                    top = _parse(committed[stream]) if stream in committed else None
                    for entry_id, fields in items:
                        if top is not None and _parse(entry_id) <= top:
                            skipped.setdefault(stream, []).append(entry_id)
                        else:
                            batch.append(_Entry(stream, entry_id, fields))
            if skipped:  # committed before a crash that came before their XACK
                self._ack(client, skipped)
            if not batch:
                continue
            for entry in batch:  # in id order within each stream: the last is the newest
                committed[entry.stream] = _text(entry.id)
            entries += len(batch)
            state = {"kind": self.kind, "ids": dict(committed), "entries": entries}
            acks: dict[str, list[bytes]] = {}
            for entry in batch:
                acks.setdefault(entry.stream, []).append(entry.id)
            self._unacked[_token(state)] = acks
            yield self._batch(batch, state)

    def _prepare(self, client: Any, stream: str, committed: str | None, refresh: bool) -> None:
        """The group on ``stream`` exists and is not behind the committed id."""
        redis = self._redis()
        group = self._groups(client, [stream])[stream]
        start = self.config.start
        if refresh:
            # --full-refresh reads again what the stream holds: the group starts over (its
            # pending list too, or those entries would be read twice).
            start = "0" if start == "$" else start
            if group is not None:
                client.xgroup_destroy(stream, self.group)
                group = None
        if group is None:
            try:
                client.xgroup_create(stream, self.group, id=committed or start, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            return
        if committed is not None and _parse(group["last-delivered-id"]) < _parse(committed):
            client.xgroup_setid(stream, self.group, committed)

    def _claim_orphans(self, client: Any, stream: str) -> None:
        """Entries pending at other consumers of the group become this consumer's, so that
        they are read (in id order, with its own) before anything new."""
        me = self.config.consumer
        others = [
            c for c in client.xinfo_consumers(stream, self.group)
            if _text(c["name"]) != me and int(c["pending"])
        ]  # fmt: skip
        if not others:
            return
        start: bytes | str = "0-0"
        while True:
            reply = client.xautoclaim(stream, self.group, me, 0, start, count=1000)
            start, deleted = reply[0], reply[2] if len(reply) > 2 else []
            if deleted:
                # Redis drops them from the pending list as it finds them: nothing is left
                # to read, or to dead-letter (docs/brokers-redis-mqtt.md, "Not built").
                log.warning("%s: %d entr(ies) pending at another consumer of %s were deleted "
                            "from %s before they were ingested", self.dataset, len(deleted),
                            self.group, stream)  # fmt: skip
            if _parse(start) == (0, 0):
                return

    def _groups(self, client: Any, streams: list[str] | None = None) -> dict[str, Any]:
        """Stream → this dataset's group on it (XINFO GROUPS), or None (no group, or no
        stream). A key that is not a stream is an error that says so."""
        redis = self._redis()
        found: dict[str, Any] = {}
        for stream in streams or self.config.streams:
            try:
                groups = client.xinfo_groups(stream)
            except redis.ResponseError as exc:
                if "no such key" in str(exc).lower():
                    found[stream] = None
                    continue
                if "WRONGTYPE" in str(exc):
                    raise SourceError(
                        f"{self.dataset}: Redis key {stream!r} is not a stream",
                        dataset=self.dataset,
                        hint="name a stream key in streams: (TYPE key must say stream)",
                    ) from None
                raise
            found[stream] = next((g for g in groups if _text(g["name"]) == self.group), None)
        return found

    def _unread_without_group(self, client: Any, stream: str, committed: str | None) -> bool:
        if committed is not None:
            return bool(client.xrange(stream, min=f"({committed}", count=1))
        if self.config.start == "$":
            return False
        return bool(client.xlen(stream))

    def _backlog(self, client: Any) -> tuple[dict[str, int | None], dict[str, int]]:
        """(lag, unacknowledged) per stream: entries not yet delivered to the group (None:
        Redis cannot tell, after deletions) and entries delivered but not acknowledged."""
        lags: dict[str, int | None] = {}
        unacked: dict[str, int] = {}
        for stream, group in self._groups(client).items():
            unacked[stream] = 0 if group is None else int(group["pending"])
            if group is not None:
                lags[stream] = _lag(group)
            elif self.config.start == "$":
                lags[stream] = 0  # the group will start at the stream's end
            else:
                lags[stream] = int(client.xlen(stream))  # (0 for a missing stream)
        return lags, unacked

    def _ack(self, client: Any, acks: dict[str, list[bytes]]) -> None:
        pipe = client.pipeline(transaction=False)
        for stream, ids in acks.items():
            for i in range(0, len(ids), _ACK_CHUNK):
                pipe.xack(stream, self.group, *ids[i : i + _ACK_CHUNK])
        pipe.execute()

    def _batch(self, batch: list[_Entry], state: dict[str, Any]) -> SourceBatch:
        import pyarrow as pa

        field = self.config.payload.field
        texts = [_as_text(e.fields) for e in batch] if field is None else []
        # Every field a column: each record gets every key of the batch (None where missing).
        keys = list(dict.fromkeys(k for t in texts if t is not None for k in t))
        messages = [
            self._message(entry, field, keys, texts[i] if texts else None)
            for i, entry in enumerate(batch)
        ]
        ids = [_text(e.id) for e in batch]
        prefix = self.config.metadata_prefix
        metadata = {
            f"{prefix}stream": pa.array([e.stream for e in batch], pa.string()),
            f"{prefix}id": pa.array(ids, pa.string()),
            f"{prefix}timestamp": pa.array(
                [_parse(i)[0] for i in ids], pa.timestamp("ms", tz="UTC")
            ),
        }
        data, rejected = assemble(self._decoder, messages, metadata, self.dataset)
        streams = len({e.stream for e in batch})
        description = f"{data.num_rows:,} entr(ies) from {streams} stream(s)"
        if rejected is not None:
            description += f", {rejected.num_rows:,} dead letter(s)"
        return SourceBatch(data, state, description, units=len(batch), rejected=rejected)

    def _message(
        self, entry: _Entry, field: str | None, keys: list[str], text: dict[str, str] | None
    ) -> Message:
        import orjson

        entry_id = _text(entry.id)

        def message(payload: bytes | None, problem: str | None = None) -> Message:
            origin = f"redis://{entry.stream}"
            return Message(payload, origin, _parse(entry_id)[0], f"entry {entry_id}", problem)

        if not entry.fields:  # what XREADGROUP returns for a pending entry deleted since
            return message(None, "deleted from the stream (XDEL or trimming) before it was read")
        as_text = {_text(k, "replace"): _text(v, "replace") for k, v in entry.fields.items()}
        if field is not None:
            payload = entry.fields.get(field.encode())
            if payload is None:
                problem = f"no field {field!r} in the entry (it has: {', '.join(as_text)})"
                return message(orjson.dumps(as_text), problem)
            return message(payload)
        if text is None:
            bad = [k for k, v in entry.fields.items() if _as_text({k: v}) is None]
            shown = ", ".join(repr(_text(k, "replace")) for k in bad)
            return message(orjson.dumps(as_text), f"field(s) {shown} not UTF-8 text")
        return message(orjson.dumps({k: text.get(k) for k in keys}))

    # -- the connection -------------------------------------------------------------------

    @staticmethod
    def _redis() -> Any:
        return require("redis")

    def _connect(self, timeout: float) -> Any:
        redis = self._redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        url = self.config.resolved_url(self.dataset)
        options: dict[str, Any] = {}
        tls = self.config.tls
        if tls is not None:
            if url.startswith("redis://"):
                url = "rediss://" + url.removeprefix("redis://")
            ca, cert, key = tls.paths(self.project_root, self.dataset)
            options.update(
                ssl_ca_certs=ca,
                ssl_certfile=cert,
                ssl_keyfile=key,
                ssl_cert_reqs="required" if tls.verify else "none",
                ssl_check_hostname=tls.verify,
            )
        try:
            # No hidden retries: a failure is reported at once, and the task's retries apply.
            client = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                **options,
            )
            client.ping()
        except redis.RedisError as exc:
            failure = self._failure(exc, "is not reachable")
            if url.startswith("rediss://") and "refused" not in str(exc).lower():
                failure.hint = tls_failure(exc) or CLOSED_DURING_TLS
            raise failure from None
        return client

    def _failure(self, exc: Exception, what: str) -> SourceError:
        redis = self._redis()
        message = f"{self.dataset}: Redis at {self._shown_url()} {what}: {exc}"
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError) or "NOGROUP" in str(exc):
            return TransientSourceError(
                message, dataset=self.dataset, hint="is the Redis server up and reachable?"
            )
        if isinstance(exc, redis.AuthenticationError | redis.AuthorizationError):
            return SourceError(message, dataset=self.dataset, hint="check the URL's credentials")
        return SourceError(message, dataset=self.dataset)

    def _shown_url(self) -> str:
        cfg = self.config
        if cfg.url_env is not None and not os.environ.get(cfg.url_env):
            return f"${cfg.url_env}"
        try:
            return shown_url(cfg.resolved_url(self.dataset))
        except SourceError:
            return f"${cfg.url_env}"


def shown_url(url: str) -> str:
    """``url`` with its password masked."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _text(value: bytes | str, errors: str = "strict") -> str:
    return value.decode("utf-8", errors) if isinstance(value, bytes) else value


def _as_text(fields: dict[bytes, bytes]) -> dict[str, str] | None:
    """An entry's fields as text, or None when one is not UTF-8."""
    try:
        return {k.decode("utf-8"): v.decode("utf-8") for k, v in fields.items()}
    except UnicodeDecodeError:
        return None


def _parse(entry_id: bytes | str) -> tuple[int, int]:
    """An entry id as (milliseconds, sequence): ids compare as these pairs."""
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _token(state: dict[str, Any]) -> str:
    """Identifies a batch by its state (the ids move forward with every batch)."""
    return json.dumps(state.get("ids", {}), sort_keys=True)


def _lag(group: dict[str, Any]) -> int | None:
    lag = group.get("lag")
    return None if lag is None else int(lag)


def _newer(client: Any, stream: str, group: dict[str, Any]) -> bool:
    """Whether entries were added after the group's last delivered one (for when Redis
    cannot count the lag)."""
    last = client.xinfo_stream(stream)["last-generated-id"]
    return _parse(last) > _parse(group["last-delivered-id"])
