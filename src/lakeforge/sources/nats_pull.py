"""Pull requests of a JetStream durable consumer, read lean.

nats-py's ``PullSubscription.fetch`` hands out each message through an asyncio task of its
own (``next_msg`` wraps every queue read in ``wait_for``) and parses each message's ack
subject into dataclasses and a datetime: at tens of thousands of messages a second that is
most of a core. :class:`Puller` keeps nats-py for everything else (the connection, auth,
the JetStream API, acks) and sends the pull requests itself, on the same connection:
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` with ``{"batch": n, "no_wait": true}``,
answered on an inbox subscription with a plain callback. The server delivers what the
consumer has available now, up to ``n`` messages, then ends the request with a status
message (404: nothing available; 408: fewer than ``n``) — or without one when all ``n`` came.

Each request has an inbox subject of its own (``<inbox>.<k>``; a status message comes on it,
a message keeps its stream subject), so a status that answers an earlier request is never
taken for the end of the current one. The message's metadata (stream
and delivery sequences, store time, messages pending) is read from its ack subject, once.

Nothing delivered may go unseen: a message the client dropped (nats-py drops messages of a
subscription whose buffer overflows) would be acknowledged by the ack-all of a later one.
Deliveries to a consumer are numbered one by one (redeliveries included) and a source's
consumer has no other reader, so a gap in those numbers is an error, never a batch.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from typing import Any

import orjson

from lakeforge.errors import SourceError, TransientSourceError

# A message's ack subject: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
# (9 tokens), or with a domain and an account hash after ACK (11 tokens or more).
_V1_TOKENS = 9
_V2_TOKENS = 11
_BUFFER_MESSAGES = 1_000_000  # the inbox subscription's buffer; overflow is a gap (an error)
_BUFFER_BYTES = 1 << 30


@dataclasses.dataclass
class Pulled:
    """What one pull request brought, column-wise: per message its payload, subject, ack
    subject (``reply``), headers (None: none), stream sequence, store time (ns since the
    epoch) and the messages pending behind it. ``ended``: the consumer had no more
    available (the server said so)."""

    payloads: list[bytes] = dataclasses.field(default_factory=list)
    subjects: list[str] = dataclasses.field(default_factory=list)
    replies: list[str] = dataclasses.field(default_factory=list)
    headers: list[dict[str, str] | None] = dataclasses.field(default_factory=list)
    seqs: list[int] = dataclasses.field(default_factory=list)
    times: list[int] = dataclasses.field(default_factory=list)
    pending: list[int] = dataclasses.field(default_factory=list)
    ended: bool = False

    def __len__(self) -> int:
        return len(self.seqs)

    def add(
        self,
        payload: bytes,
        subject: str,
        reply: str,
        headers: dict[str, str] | None,
        seq: int,
        at: int,
        pending: int,
    ) -> None:
        self.payloads.append(payload)
        self.subjects.append(subject)
        self.replies.append(reply)
        self.headers.append(headers)
        self.seqs.append(seq)
        self.times.append(at)
        self.pending.append(pending)

    def extend(self, other: Pulled) -> None:
        """Append all of ``other``'s messages."""
        self.payloads += other.payloads
        self.subjects += other.subjects
        self.replies += other.replies
        self.headers += other.headers
        self.seqs += other.seqs
        self.times += other.times
        self.pending += other.pending


def ack_metadata(reply: str) -> tuple[int, int, int, int] | None:
    """(stream sequence, delivery number, store time ns, pending) from a JetStream ack
    subject, or None when ``reply`` is not one."""
    tokens = reply.split(".")
    n = len(tokens)
    if n == _V1_TOKENS and tokens[0] == "$JS":
        at = 4
    elif n >= _V2_TOKENS and tokens[0] == "$JS":
        at = 6
    else:
        return None
    return int(tokens[at + 1]), int(tokens[at + 2]), int(tokens[at + 3]), int(tokens[at + 4])


class PullRequests(abc.ABC):
    """Pull requests of one durable consumer, one at a time: what the connection delivers
    is handed to :meth:`_accept` / :meth:`_status`; subclasses send and receive."""

    def __init__(self, stream: str, durable: str, dataset: str, inbox: str) -> None:
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = inbox
        self._dataset = dataset
        self._what = f"NATS consumer {durable} of stream {stream}"
        self._requests = 0
        self._reply = ""  # the inbox subject of the request being answered
        self._want = 0
        self._pulled = Pulled()
        self._answered = asyncio.Event()
        self._failure: SourceError | None = None
        self._delivery: int | None = None  # the last delivery number seen

    @abc.abstractmethod
    async def start(self) -> None:
        """Subscribe to the inbox (and connect, for a connection of its own)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Unsubscribe (and close what start() opened)."""

    @abc.abstractmethod
    async def _send(self, subject: str, payload: bytes, reply: str) -> None:
        """Publish one request."""

    async def pull(self, count: int, timeout: float) -> Pulled:
        """Up to ``count`` messages available now. Raises TimeoutError when the server sent
        nothing for ``timeout`` seconds before the request ended."""
        if self._failure is not None:  # the connection failed between two requests
            raise self._failure
        self._requests += 1
        self._reply = f"{self._inbox}.{self._requests}"
        self._want = count
        self._pulled = pulled = Pulled()
        self._answered.clear()
        request = orjson.dumps({"batch": count, "no_wait": True})
        await self._send(self._subject, request, self._reply)
        while not self._answered.is_set():
            seen = len(pulled)
            try:
                await asyncio.wait_for(self._answered.wait(), timeout)
            except TimeoutError:
                if len(pulled) == seen:  # no progress at all: the server is silent
                    self._reply = ""
                    raise
        self._reply = ""
        if self._failure is not None:
            raise self._failure
        return pulled

    def _accept(
        self, payload: bytes, subject: str, reply: str, headers: dict[str, str] | None
    ) -> None:
        """A message delivered to the inbox (not a status)."""
        if not self._reply:
            return  # no request open (one timed out): a gap, should the reader go on
        meta = ack_metadata(reply)
        if meta is None:
            self._fail(not_jetstream(self._dataset, self._what, reply))
            return
        seq, delivery, at, pending = meta
        if self._delivery is not None and delivery != self._delivery + 1:
            self._fail(delivery_gap(self._dataset, self._what, self._delivery, delivery))
            return
        self._delivery = delivery
        pulled = self._pulled
        pulled.add(payload, subject, reply, headers, seq, at, pending)
        if len(pulled) >= self._want:
            self._answered.set()

    def _status(self, subject: str, code: str, description: str) -> None:
        """A status message (no payload) on ``subject``, an inbox subject of a request."""
        if not self._reply or subject != self._reply:
            return  # the end of an earlier request (that timed out), not of this one
        failure = status_failure(self._dataset, self._what, code, description)
        if failure is not None:
            self._fail(failure)
        elif code != "100":  # 100: an idle heartbeat, the request is open
            self._pulled.ended = True
            self._answered.set()

    def _fail(self, failure: SourceError) -> None:
        if self._failure is None:
            self._failure = failure
        self._answered.set()


class Puller(PullRequests):
    """Pull requests over the nats-py connection, answered in a subscription callback."""

    def __init__(self, nc: Any, stream: str, durable: str, dataset: str) -> None:
        super().__init__(stream, durable, dataset, nc.new_inbox())
        self._nc = nc
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            f"{self._inbox}.*",
            cb=self._on_message,
            pending_msgs_limit=_BUFFER_MESSAGES,
            pending_bytes_limit=_BUFFER_BYTES,
        )

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def _send(self, subject: str, payload: bytes, reply: str) -> None:
        assert self._sub is not None, "start() first"
        await self._nc.publish(subject, payload, reply=reply)

    async def _on_message(self, msg: Any) -> None:
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:
            from nats.js.api import Header

            self._status(msg.subject, headers["Status"], headers.get(Header.DESCRIPTION, ""))
        else:
            self._accept(msg.data, msg.subject, msg.reply, headers or None)


def status_failure(dataset: str, what: str, code: str, description: str) -> SourceError | None:
    """The failure a pull request's status means; None for 404/408 (nothing (more)
    available now) and 100 (an idle heartbeat)."""
    if code in ("404", "408", "100"):
        return None
    return TransientSourceError(
        f"{dataset}: {what} answered a pull request with {code} {description}".rstrip(),
        dataset=dataset,
    )


def not_jetstream(dataset: str, what: str, reply: str) -> SourceError:
    return SourceError(
        f"{dataset}: {what} delivered a message that is not a JetStream message (reply {reply!r})",
        dataset=dataset,
    )


def delivery_gap(dataset: str, what: str, last: int, delivery: int) -> SourceError:
    return TransientSourceError(
        f"{dataset}: {what}: delivery {last + 1} to {delivery - 1} did not reach the reader "
        "(the client dropped them); nothing of this batch is acknowledged, the next run reads "
        "them again",
        dataset=dataset,
    )
