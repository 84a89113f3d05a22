"""The NATS wire reader's frame parser: every frame, whatever the socket's chunks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lakeforge.errors import TransientSourceError
from lakeforge.sources.nats_wire import WirePuller, wire_credentials


class Recorder(WirePuller):
    """The parser's calls, recorded (no connection)."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 4222, {}, stream="S", durable="d", dataset="ds",
                         name="t", inbox="_INBOX.x", timeout=1.0)  # fmt: skip
        self.seen: list[tuple[Any, ...]] = []
        self.writes: list[bytes] = []

        class Writer:
            def write(_self, data: bytes) -> None:
                self.writes.append(data)

        self._writer = Writer()  # type: ignore[assignment]

    def _accept(self, payload: bytes, subject: str, reply: str, headers: Any) -> None:
        self.seen.append(("msg", subject, reply, payload, headers))

    def _status(self, subject: str, code: str, description: str) -> None:
        self.seen.append(("status", subject, code, description))


ACK = "$JS.ACK.S.d.1.7.7.1796288963401314207.3"
HEADERS = b"NATS/1.0\r\ntrace: t-6\r\nk: v\r\n\r\n"
FRAMES = [
    (f"MSG S.orders 1 {ACK} 11\r\n".encode() + b'{"id": 7}\r\n' + b"\r\n",
     ("msg", "S.orders", ACK, b'{"id": 7}\r\n', None)),
    (f"MSG S.empty 1 {ACK} 0\r\n\r\n".encode(), ("msg", "S.empty", ACK, b"", None)),
    (b"PING\r\n", None),
    (f"HMSG S.h 1 {ACK} {len(HEADERS)} {len(HEADERS) + 4}\r\n".encode() + HEADERS + b"body\r\n",
     ("msg", "S.h", ACK, b"body", {"trace": "t-6", "k": "v"})),
    (b"HMSG _INBOX.x.3 1 28 28\r\nNATS/1.0 404 No Messages\r\n\r\n\r\n",
     ("status", "_INBOX.x.3", "404", "No Messages")),
    (b"+OK\r\n", None),
    (b'INFO {"server_id": "x"}\r\n', None),
    (f"MSG S.é 1 {ACK} 2\r\n".encode() + "é".encode() + b"\r\n",
     ("msg", "S.é", ACK, "é".encode(), None)),
]  # fmt: skip


def test_every_kind_of_frame_is_parsed() -> None:
    wire = Recorder()
    rest = wire._parse(b"".join(frame for frame, _ in FRAMES))
    assert rest == b""
    assert wire.seen == [expected for _, expected in FRAMES if expected is not None]
    assert wire.writes == [b"PONG\r\n"]  # the server's PING is answered


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_frames_split_anywhere_across_reads_are_parsed_the_same(cuts: list[int]) -> None:
    data = b"".join(frame for frame, _ in FRAMES)
    wire = Recorder()
    buffer, last = b"", 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        buffer = wire._parse(buffer + data[last:cut])
        last = cut
    assert buffer == b""
    assert wire.seen == [expected for _, expected in FRAMES if expected is not None]


def test_an_error_from_the_server_fails_the_reader() -> None:
    with pytest.raises(TransientSourceError, match="Slow Consumer"):
        Recorder()._parse(b"-ERR 'Slow Consumer'\r\n")


def test_credentials_come_from_what_nats_py_connected_with() -> None:
    class Url:
        username, password = None, None

    assert wire_credentials(Url(), {}) == {}
    assert wire_credentials(Url(), {"user": "u", "password": "p"}) == {"user": "u", "pass": "p"}
    assert wire_credentials(Url(), {"token": "t"}) == {"auth_token": "t"}
    # A user without a password is not sent (as nats-py does): the URL or nothing counts.
    assert wire_credentials(Url(), {"user": "u"}) == {}
    assert wire_credentials(Url(), {"user": "u", "password": "p", "token": "t"}) == {
        "user": "u",
        "pass": "p",
    }
    Url.username, Url.password = "tok", None  # nats://tok@host: a token
    assert wire_credentials(Url(), {}) == {"auth_token": "tok"}
    Url.username, Url.password = "u", "p"
    assert wire_credentials(Url(), {}) == {"user": "u", "pass": "p"}
    assert wire_credentials(Url(), {"user_credentials": "x.creds"}) is None  # nats-py's path


def test_a_connection_failure_between_two_pulls_fails_the_next_one() -> None:
    import asyncio

    wire = Recorder()
    wire._fail(TransientSourceError("ds: NATS closed the message connection: x", dataset="ds"))
    with pytest.raises(TransientSourceError, match="closed the message connection"):
        asyncio.run(wire.pull(10, timeout=0.1))
