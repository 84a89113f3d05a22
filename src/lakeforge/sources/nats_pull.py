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
    """What one pull request brought: messages (nats-py ``Msg``) and, per message, its
    stream sequence, store time (ns since the epoch) and the messages pending behind it.
    ``ended``: the consumer had no more available (the server said so)."""

    messages: list[Any] = dataclasses.field(default_factory=list)
    seqs: list[int] = dataclasses.field(default_factory=list)
    times: list[int] = dataclasses.field(default_factory=list)
    pending: list[int] = dataclasses.field(default_factory=list)
    ended: bool = False


class Puller:
    """Pull requests of one durable consumer over a nats-py connection (see the module)."""

    def __init__(self, nc: Any, stream: str, durable: str, dataset: str) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._dataset = dataset
        self._what = f"NATS consumer {durable} of stream {stream}"
        self._sub: Any = None
        self._requests = 0
        self._reply = ""  # the inbox subject of the request being answered
        self._want = 0
        self._pulled = Pulled()
        self._answered = asyncio.Event()
        self._failure: SourceError | None = None
        self._delivery: int | None = None  # the last delivery number seen

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

    async def pull(self, count: int, timeout: float) -> Pulled:
        """Up to ``count`` messages available now. Raises TimeoutError when the server sent
        nothing for ``timeout`` seconds before the request ended."""
        assert self._sub is not None, "start() first"
        self._requests += 1
        self._reply = f"{self._inbox}.{self._requests}"
        self._want = count
        self._pulled = pulled = Pulled()
        self._answered.clear()
        request = orjson.dumps({"batch": count, "no_wait": True})
        await self._nc.publish(self._subject, request, reply=self._reply)
        while not self._answered.is_set():
            seen = len(pulled.messages)
            try:
                await asyncio.wait_for(self._answered.wait(), timeout)
            except TimeoutError:
                if len(pulled.messages) == seen:  # no progress at all: the server is silent
                    self._reply = ""
                    raise
        self._reply = ""
        if self._failure is not None:
            raise self._failure
        return pulled

    async def _on_message(self, msg: Any) -> None:
        if not self._reply:
            return  # no request open (one timed out): a gap, should the reader go on
        pulled = self._pulled
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:
            # A status is sent to the request's own inbox subject; one for an earlier
            # request (that timed out) is not the end of this one.
            if msg.subject == self._reply:
                self._on_status(headers)
            return
        tokens = msg.reply.split(".")
        n = len(tokens)
        if n == _V1_TOKENS:
            at = 4
        elif n >= _V2_TOKENS and tokens[0] == "$JS":
            at = 6
        else:
            self._fail(SourceError(f"{self._dataset}: {self._what} delivered a message "
                                   f"that is not a JetStream message (reply {msg.reply!r})",
                                   dataset=self._dataset))  # fmt: skip
            return
        delivery = int(tokens[at + 2])
        if self._delivery is not None and delivery != self._delivery + 1:
            self._fail(
                TransientSourceError(
                    f"{self._dataset}: {self._what}: delivery {self._delivery + 1} to "
                    f"{delivery - 1} did not reach the reader (the client dropped them); "
                    "nothing of this batch is acknowledged, the next run reads them again",
                    dataset=self._dataset,
                )
            )
            return
        self._delivery = delivery
        pulled.messages.append(msg)
        pulled.seqs.append(int(tokens[at + 1]))
        pulled.times.append(int(tokens[at + 3]))
        pulled.pending.append(int(tokens[at + 4]))
        if len(pulled.messages) >= self._want:
            self._answered.set()

    def _on_status(self, headers: dict[str, str]) -> None:
        code = headers["Status"]
        if code in ("404", "408"):  # nothing (more) available now
            self._pulled.ended = True
            self._answered.set()
        elif code == "100":  # an idle heartbeat: the request is still open
            return
        else:
            from nats.js.api import Header

            description = headers.get(Header.DESCRIPTION, "")
            self._fail(
                TransientSourceError(
                    f"{self._dataset}: {self._what} answered a pull request with "
                    f"{code} {description}".rstrip(),
                    dataset=self._dataset,
                )
            )

    def _fail(self, failure: SourceError) -> None:
        if self._failure is None:
            self._failure = failure
        self._answered.set()
