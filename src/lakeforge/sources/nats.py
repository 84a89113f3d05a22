"""The NATS JetStream source: messages of a stream, through a durable pull consumer.

The table, not the consumer, holds the position: each batch's commit carries the stream
sequence of the last message it holds (``seq``). The consumer acknowledges with
``AckPolicy.ALL``, so one ack of a batch's last message acknowledges the whole batch; it is
sent only in :meth:`committed`, after the batch's Delta commit.

When a run starts, the durable consumer is compared with the table:

- in step: the consumer delivered up to the committed sequence. Messages it redelivers at
  or below that sequence (a crash came between a commit and its ack) are in the table:
  they are acked and skipped;
- it delivered messages past the committed sequence (a crash or a failure came before
  their commit; JetStream would redeliver them only after ``ack_wait``), is behind the
  table, or has another configuration (filter, ack policy): it is deleted and created
  again at the committed sequence + 1 — the consumer belongs to the dataset;
- it does not exist: it is created at the committed sequence + 1, or at ``start`` (``all``:
  the stream's first message; ``new``: after its last) when the table has none. Until the
  first commit, the consumer keeps where a ``new`` start is.

``lakeforge run`` reads what is available now: it stops once it has read a message with no
message pending behind it at its delivery, or the stream's last message of when the run
started. Rows get ``_subject``, ``_stream_seq`` and ``_timestamp`` (and ``_headers``);
messages that cannot be decoded go to the dead-letter queue with origin
``nats://<stream>/<subject>`` and the stream sequence as ``line``.

nats-py is asyncio; the executor is synchronous. The source runs the client in an event
loop of its own, created by :meth:`batches` (and by each probe) and closed with it; while
reading, the loop runs in a thread, which pulls the next batch while the executor decodes,
transforms and commits the one before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import ssl
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.extras import require
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.broker_batch import Message, Payloads, assemble
from lakeforge.sources.nats_config import SECRET_REFERENCE, NatsConfig
from lakeforge.sources.nats_pull import Pulled, Puller, PullRequests
from lakeforge.sources.nats_wire import WirePuller, wire_credentials
from lakeforge.sources.payloads import PayloadDecoder
from lakeforge.sources.tls import CLOSED_DURING_TLS, quiet_benign_ssl_eof, tls_failure

log = logging.getLogger(__name__)

T = TypeVar("T")
_PROBE_TIMEOUT = 3.0  # seconds: `pending()` and `status()` must be quick
_SLACK = 256  # max_ack_pending beyond two batches


@dataclasses.dataclass
class Position:
    """The stream sequence of the last committed message (None: the table has none);
    messages committed in all; ``refresh``: a ``--full-refresh`` (``start`` applies anew)."""

    seq: int | None = None
    messages: int = 0
    refresh: bool = False


@dataclasses.dataclass
class _Probe:
    pending: int  # messages the consumer has not delivered yet (or the stream, without one)
    uncommitted: int  # delivered past the committed sequence, not in the table
    last_seq: int  # the stream's last sequence
    consumer: bool  # the durable consumer exists
    past: bool = False  # the table read past the stream's last message


class NatsSource(Source):
    """Messages of a JetStream stream; acked (ack-all) after each commit."""

    kind = "nats"
    replay_refusal = (
        "a NATS source's dead letters are not replayed: each keeps its raw payload (`raw`), "
        "subject (`source_file`) and stream sequence (`line`); fix the producer and publish "
        "the corrected messages again"
    )

    def __init__(self, dataset: str, project_root: Path, config: NatsConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self.durable = config.durable or f"lakeforge_{dataset}"
        self._decoder = PayloadDecoder(config.payload, project_root, dataset)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unacked: dict[int, str] = {}  # batch's last sequence → its ack subject
        self._nc: Any = None  # the client of batches(), while they are read
        self._options: dict[str, Any] = {}  # what the client connected with
        self._ssl: ssl.SSLContext | None = None
        self._metrics: dict[str, Any] = {}

    # -- position -------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> Position:
        for state in committed:  # the newest commit holds the whole position
            if state.get("kind") == self.kind:
                return Position(int(state["seq"]), int(state.get("messages", 0)))
        return Position()

    def fresh(self) -> Position:
        return Position(refresh=True)

    def pending(self, position: Any) -> str | None:
        probe = self._probe(position)
        if probe.past:
            return f"read past the end of {self.config.stream} (see the run's error)"
        reasons = []
        if probe.pending:
            where = "" if probe.consumer else " (consumer not created yet)"
            reasons.append(f"{probe.pending:,} new message(s) in {self.config.stream}{where}")
        if probe.uncommitted:
            reasons.append(f"{probe.uncommitted:,} delivered message(s) not committed")
        return "; ".join(reasons) or None

    def status(self, position: Any) -> SourceStatus:
        pos: Position = position
        cfg = self.config
        details: dict[str, Any] = {
            "stream": cfg.stream,
            "subjects": list(cfg.subjects),
            "durable": self.durable,
            "seq": pos.seq,
        }
        pending = 0
        try:
            probe = self._probe(pos)
            details.update(lag=probe.pending, uncommitted=probe.uncommitted)
            details["last_seq"] = probe.last_seq
            pending = probe.pending + probe.uncommitted
        except SourceError as exc:
            details["error"] = str(exc)
        return SourceStatus(
            kind=self.kind,
            target=" ".join([cfg.servers[0], cfg.stream, *cfg.subjects[:1]]),
            consumed=pos.messages,
            pending=pending,
            details=details,
        )

    def metrics(self) -> dict[str, Any]:
        """The consumer's pending messages (its lag) and unacknowledged ones when the last
        :meth:`batches` ended (for the task's ``metrics.source``)."""
        return dict(self._metrics)

    # -- the client -----------------------------------------------------------------------

    @property
    def _probe_timeout(self) -> float:
        return min(_PROBE_TIMEOUT, self.config.timeout)

    def _nats(self) -> Any:
        require("nats")
        import nats.errors
        import nats.js.api
        import nats.js.errors

        return nats

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._submit(coro).result()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _connect(self, timeout: float) -> Any:
        nats = self._nats()
        cfg = self.config

        async def on_error(exc: Exception) -> None:
            log.debug("%s: NATS: %s", self.dataset, exc)

        options: dict[str, Any] = {
            "servers": cfg.servers,
            "connect_timeout": timeout,
            "allow_reconnect": False,
            # 0 would retry the first connect forever: one more try per server, soon.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.2,
            "error_cb": on_error,
            "name": f"lakeforge {self.dataset}",
        }
        if cfg.user is not None:
            options["user"] = cfg.user
        if cfg.password is not None:
            options["password"] = self._secret(cfg.password)
        if cfg.token is not None:
            options["token"] = self._secret(cfg.token)
        if cfg.creds_file is not None:
            options["user_credentials"] = str(self.project_root / cfg.creds_file)
        tls_context = self._tls_context()
        if tls_context is not None:
            quiet_benign_ssl_eof()
        if cfg.tls is not None:
            options["tls"] = tls_context
            if cfg.tls.server_name is not None:
                options["tls_hostname"] = cfg.tls.server_name
        self._options = options
        bound = 2 * (timeout + 0.5) * len(cfg.servers)  # a hard bound, whatever the client does
        try:
            nc = await asyncio.wait_for(nats.connect(**options), bound)
        except Exception as exc:  # nats-py raises several types for one failed connect
            cause = exc.__cause__ or exc.__context__ or exc
            raise TransientSourceError(
                f"{self.dataset}: cannot connect to NATS at {','.join(cfg.servers)}: "
                f"{type(exc).__name__}: {exc}",
                dataset=self.dataset,
                hint=tls_failure(cause)
                or (CLOSED_DURING_TLS if self._ssl is not None else None)
                or "check the source's servers: and that nats-server runs with JetStream",
            ) from None
        if cfg.tls is not None and not (nc._server_info or {}).get("tls_required"):
            # nats-py upgrades only when the server requires TLS: refuse a plain connection.
            await nc.close()
            raise SourceError(
                f"{self.dataset}: the NATS server at {','.join(cfg.servers)} does not require "
                "TLS: the connection would not be encrypted",
                dataset=self.dataset,
                hint="enable TLS on the server, or drop the source's tls:",
            )
        return nc

    def _tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of both connections: the source's ``tls``, else, for a
        ``tls://`` server, the system's trusted certificates (None: plain TCP)."""
        if self._ssl is None:
            if self.config.tls is not None:
                self._ssl = self.config.tls.context(self.project_root, self.dataset)
            elif any(s.startswith("tls://") for s in self.config.servers):
                self._ssl = ssl.create_default_context()
        return self._ssl

    def _secret(self, reference: str) -> str:
        name = SECRET_REFERENCE.fullmatch(reference.strip())
        assert name is not None
        value = os.environ.get(name.group(1))
        if not value:
            raise SourceError(
                f"{self.dataset}: environment variable {name.group(1)} (a NATS secret) is not set",
                dataset=self.dataset,
                hint=f"export {name.group(1)}=…",
            )
        return value

    def _failure(self, exc: Exception, what: str) -> SourceError:
        nats = self._nats()
        message = f"{self.dataset}: NATS stream {self.config.stream}: {what}: {exc}"
        if isinstance(exc, nats.js.errors.NotFoundError):
            return SourceError(
                f"{self.dataset}: NATS stream {self.config.stream!r} does not exist",
                dataset=self.dataset,
                hint="create it (nats stream add) or fix the source's stream:",
            )
        if isinstance(exc, nats.js.errors.APIError):
            return SourceError(message, dataset=self.dataset)
        return TransientSourceError(message, dataset=self.dataset)

    def _probe(self, position: Any) -> _Probe:
        pos: Position = position
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(self._probe_async(pos))
        finally:
            loop.close()

    async def _probe_async(self, pos: Position) -> _Probe:
        nats = self._nats()
        nc = await self._connect(self._probe_timeout)
        try:
            js = nc.jetstream(timeout=self._probe_timeout)
            stream = await js.stream_info(self.config.stream)
            info = await self._consumer_info(js)
            last = int(stream.state.last_seq)
            committed = None if pos.refresh else pos.seq
            if committed is not None and committed > last:
                return _Probe(0, 0, last, info is not None, past=True)
            if info is None or pos.refresh or self._misfit(info):
                # What a new consumer would read (the stream's messages after the position;
                # all subjects counted: a close enough guess before the first read).
                first = int(stream.state.first_seq)
                after = committed if committed is not None else first - 1
                if committed is None and self.config.start == "new":
                    after = last
                return _Probe(max(0, last - after), 0, last, info is not None)
            delivered = int(info.delivered.stream_seq)
            uncommitted = 0
            if committed is None or delivered > committed:
                uncommitted = int(info.num_ack_pending)
            return _Probe(int(info.num_pending), uncommitted, last, True)
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._failure(exc, "could not be asked what is new") from None
        finally:
            await nc.close()

    async def _consumer_info(self, js: Any) -> Any:
        nats = self._nats()
        try:
            return await js.consumer_info(self.config.stream, self.durable)
        except nats.js.errors.NotFoundError:
            return None

    def _misfit(self, info: Any) -> str | None:
        """Why an existing consumer does not fit the source's configuration, or None."""
        api = self._nats().js.api
        cfg = info.config
        if cfg.ack_policy != api.AckPolicy.ALL:
            return f"ack policy {cfg.ack_policy}"
        have = sorted(cfg.filter_subjects or ([cfg.filter_subject] if cfg.filter_subject else []))
        if have != sorted(self.config.subjects):
            return f"subjects {have}"
        if (cfg.max_ack_pending or 0) < self._max_ack_pending():
            return f"max_ack_pending {cfg.max_ack_pending}"
        if cfg.ack_wait is not None and abs(float(cfg.ack_wait) - self.config.ack_wait) > 0.5:
            return f"ack_wait {cfg.ack_wait}"
        return None

    def _max_ack_pending(self) -> int:
        # Ack-all leaves every message of a batch unacked until its commit.
        return max(1000, 2 * self.config.max_messages_per_batch + _SLACK)

    async def _prepare(self, nc: Any, js: Any, pos: Position, last_seq: int) -> Any:
        """The durable consumer, in step with the table (see the module's docstring)."""
        api = self._nats().js.api
        cfg = self.config
        committed = None if pos.refresh else pos.seq
        info = await self._consumer_info(js)
        reason = None
        start: int | None = None
        if info is not None:
            misfit = self._misfit(info)
            delivered = int(info.delivered.stream_seq)
            if pos.refresh:
                reason = "--full-refresh"
            elif misfit is not None:
                reason = f"it has another configuration ({misfit})"
            elif committed is not None and delivered != committed:
                reason = f"it delivered up to {delivered}, the table holds up to {committed}"
            elif committed is None and int(info.num_ack_pending):
                reason = "it delivered messages that were never committed"
                start = info.config.opt_start_seq  # keep where it started (start: new)
            if reason is None:
                return info
            log.info("%s: consumer %s is created again: %s", self.dataset, self.durable, reason)
            await js.delete_consumer(cfg.stream, self.durable)
        if committed is not None:
            start = committed + 1
        elif start is None and cfg.start == "new":
            start = last_seq + 1
        policy = api.DeliverPolicy.ALL if start is None else api.DeliverPolicy.BY_START_SEQUENCE
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.ALL,
            ack_wait=cfg.ack_wait,
            max_ack_pending=self._max_ack_pending(),
            deliver_policy=policy,
            opt_start_seq=start,
        )
        if len(cfg.subjects) == 1:
            config.filter_subject = cfg.subjects[0]
        elif cfg.subjects:
            version = nc.connected_server_version
            if (version.major, version.minor) < (2, 10):
                raise SourceError(
                    f"{self.dataset}: reading several subjects needs NATS server 2.10 or "
                    f"later (this one is {version})",
                    dataset=self.dataset,
                    hint="give one subject (wildcards allowed), or none for the whole stream",
                )
            config.filter_subjects = list(cfg.subjects)
        return await js.add_consumer(cfg.stream, config)

    # -- reading --------------------------------------------------------------------------

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        pos: Position = position
        nats = self._nats()
        self._loop, self._metrics = asyncio.new_event_loop(), {}
        # The client's loop runs in a thread of its own: the next batch arrives (and is
        # parsed) while this one is decoded, transformed and committed.
        thread = threading.Thread(
            target=self._loop.run_forever, name=f"lakeforge-nats-{self.dataset}", daemon=True
        )
        thread.start()
        try:
            nc = self._nc = self._run(self._connect(self.config.timeout))
            try:
                yield from self._read(nc, pos)
                info = self._run(self._consumer_info(nc.jetstream(timeout=self._probe_timeout)))
                if info is not None:
                    self._metrics = {
                        "lag": int(info.num_pending),
                        "unacknowledged": int(info.num_ack_pending),
                    }
            except (TimeoutError, nats.errors.Error) as exc:
                raise self._failure(exc, "failed while reading") from None
            finally:
                self._unacked.clear()
                self._nc = None
                self._run(nc.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join()
            self._loop.close()
            self._loop = None

    def committed(self, state: dict[str, Any]) -> None:
        last = self._unacked.pop(int(state.get("seq", -1)), None)
        if last is None or self._loop is None or self._nc is None:
            return
        nats = self._nats()
        try:
            # Ack-all: the batch's last message acknowledges every message before it.
            self._run(self._ack(last))
        except (TimeoutError, nats.errors.Error) as exc:
            # The batch is in the table: JetStream redelivers it, and the next run acks and
            # skips what is at or below the committed sequence.
            log.warning("%s: ack after the commit failed (%s); the next run acks",
                        self.dataset, exc)  # fmt: skip

    def _read(self, nc: Any, pos: Position) -> Iterator[SourceBatch]:
        nats = self._nats()
        cfg = self.config
        js = nc.jetstream(timeout=cfg.timeout)
        try:
            stream = self._run(js.stream_info(cfg.stream))
        except nats.js.errors.NotFoundError as exc:
            raise self._failure(exc, "") from None
        end = int(stream.state.last_seq)
        committed = None if pos.refresh else pos.seq
        if committed is not None and committed > end:
            raise SourceError(
                f"{self.dataset}: the table has read stream {cfg.stream} up to sequence "
                f"{committed}, past its last message ({end}): the stream was deleted and "
                "created again, or purged with a sequence reset",
                dataset=self.dataset,
                hint=f"`lakeforge run --full-refresh {self.dataset}` reads it again from `start`",
            )
        info = self._run(self._prepare(nc, js, pos, end))
        read = committed or 0
        messages = 0 if pos.refresh else pos.messages
        if not int(info.num_pending):
            return  # redeliveries, if any, are at or below the committed sequence
        puller = self._puller(nc)
        try:
            yield from self._pull(puller, read, messages, committed, end)
        finally:
            self._run(puller.stop())

    def _puller(self, nc: Any) -> PullRequests:
        """The wire reader on a connection of its own to nats-py's server, or nats-py's
        subscription where the wire reader cannot go (a creds file)."""
        url = nc.connected_url
        credentials = wire_credentials(url, self._options)
        if credentials is not None and url is not None and url.scheme in ("nats", "tls"):
            tls = self.config.tls
            wire = WirePuller(
                url.hostname or "127.0.0.1",
                url.port or 4222,
                credentials,
                tls=self._tls_context(),
                server_name=tls.server_name if tls is not None else None,
                stream=self.config.stream,
                durable=self.durable,
                dataset=self.dataset,
                name=f"lakeforge {self.dataset} messages",
                inbox=nc.new_inbox(),
                timeout=self.config.timeout,
            )
            self._run(wire.start())
            return wire
        puller = Puller(nc, self.config.stream, self.durable, self.dataset)
        self._run(puller.start())
        return puller

    def _pull(
        self,
        puller: PullRequests,
        read: int,
        messages: int,
        committed: int | None,
        end: int,
    ) -> Iterator[SourceBatch]:
        cfg = self.config
        done = False
        ahead: concurrent.futures.Future[Pulled] | None = None  # the next batch's pull
        try:
            while not done:
                batch = Pulled()
                skipped: str | None = None  # the ack subject of a message in the table
                started = time.monotonic()
                while not done and len(batch) < cfg.max_messages_per_batch:
                    left = cfg.max_batch_seconds - (time.monotonic() - started)
                    if left <= 0:
                        break
                    want = cfg.max_messages_per_batch - len(batch)
                    pull = ahead or self._submit(puller.pull(want, timeout=cfg.timeout))
                    ahead = None
                    try:
                        got = pull.result()
                    except TimeoutError:
                        done = True  # the server sent nothing: the rest is for the next run
                        break
                    done = got.ended
                    if got.seqs and min(got.seqs) > read:
                        # Nothing redelivered: the whole pull joins the batch.
                        batch.extend(got)
                        read = max(got.seqs)
                        done = done or 0 in got.pending or read >= end
                        continue
                    for i, seq in enumerate(got.seqs):
                        if seq <= read:
                            # Redelivered: committed already (acked and skipped), or in the
                            # batch being read (its ack covers it).
                            if committed is not None and seq <= committed:
                                skipped = got.replies[i]
                            continue
                        batch.add(got.payloads[i], got.subjects[i], got.replies[i],
                                  got.headers[i], seq, got.times[i], got.pending[i])  # fmt: skip
                        read = seq
                        if got.pending[i] == 0 or seq >= end:
                            done = True  # what was available when the run started is read
                if skipped is not None:  # in the table: its ack (ack-all) is safe now
                    self._run(self._ack(skipped))
                if not done:
                    # More is there: pull the next batch while this one is processed. (Pulled
                    # and then not committed, if the run stops after this batch: the next run
                    # finds them delivered and creates the consumer again at the table's
                    # position, as after a crash.)
                    pull_next = puller.pull(cfg.max_messages_per_batch, timeout=cfg.timeout)
                    ahead = self._submit(pull_next)
                if not len(batch):
                    continue
                messages += len(batch)
                state = {"kind": self.kind, "seq": read, "messages": messages}
                self._unacked[read] = batch.replies[-1]
                yield self._batch(batch, state)
        finally:
            if ahead is not None:  # the run stopped before the batch pulled ahead
                ahead.cancel()

    async def _ack(self, reply: str) -> None:
        """Acknowledge (ack-all) the message of ack subject ``reply`` and every one before,
        and wait for the server to confirm it."""
        assert self._nc is not None
        await self._nc.request(reply, b"+ACK", timeout=self.config.timeout)

    def _batch(self, batch: Pulled, state: dict[str, Any]) -> SourceBatch:
        import pyarrow as pa
        import pyarrow.compute as pc

        cfg = self.config
        p = cfg.metadata_prefix
        seqs = batch.seqs
        origin = f"nats://{cfg.stream}/"
        messages = Payloads(
            batch.payloads,
            lambda i: Message(batch.payloads[i], origin + batch.subjects[i], seqs[i]),
        )
        metadata: dict[str, pa.Array] = {
            f"{p}subject": pa.array(batch.subjects, pa.string()),
            f"{p}stream_seq": pa.array(seqs, pa.int64()),
            # Stored as nanoseconds since the epoch; the column keeps microseconds.
            f"{p}timestamp": pc.divide(pa.array(batch.times, pa.int64()), 1000).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
        if cfg.headers:
            header_type = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
            metadata[f"{p}headers"] = pa.array(
                [[{"key": k, "value": v} for k, v in (h or {}).items()] for h in batch.headers],
                header_type,
            )
        data, rejected = assemble(self._decoder, messages, metadata, self.dataset)
        description = f"{len(batch):,} message(s), sequence {seqs[0]}–{seqs[-1]}"
        if rejected is not None:
            description += f", {rejected.num_rows:,} dead letter(s)"
        return SourceBatch(data, state, description, units=len(batch), rejected=rejected)
