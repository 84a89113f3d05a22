"""The NATS source's message path: pull requests on a connection of its own, parsed in bulk.

nats-py handles each delivered message in Python in several steps (the protocol parser's
regular expression, a coroutine for its headers, a ``Msg`` object, a queue, the
subscription's task): about 10 µs a message, half a core at 50,000 messages a second on
the machine that must also run the broker. The NATS source keeps nats-py for everything
else — connecting, authentication, the JetStream API (streams, consumers, infos) and the
acknowledgements — and reads the messages of its pull requests over a second, plain
connection to the same server with :class:`WirePuller`: the client side of the protocol
for one subscription (``CONNECT``, ``SUB``, ``PUB``, ``MSG``/``HMSG``, ``PING``/``PONG``,
``-ERR``), whose reader takes what the socket has and slices every complete message out
of it in one loop.

It authenticates with the credentials nats-py was given (user and password, token, or
those in the server URL), and upgrades to TLS after the server's ``INFO`` as nats-py does
(the server requires it, or the source has ``tls``). A ``creds_file`` (a JWT signed with
an NKey) makes the source use nats-py's connection instead (:class:`Puller`): the same
pull requests, slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any

import orjson

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.sources.nats_pull import PullRequests
from lakeforge.sources.tls import tls_failure

_READ = 1 << 20  # bytes asked of the socket at once
_CRLF = b"\r\n"


class WirePuller(PullRequests):
    """Pull requests over a connection of their own (see the module)."""

    def __init__(
        self,
        host: str,
        port: int,
        credentials: dict[str, str],
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        stream: str,
        durable: str,
        dataset: str,
        name: str,
        inbox: str,
        timeout: float,
    ) -> None:
        super().__init__(stream, durable, dataset, inbox)
        self._host, self._port = host, port
        self._credentials = credentials
        self._tls, self._server_name = tls, server_name
        self._name = name
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, limit=_READ), self._timeout
            )
            await asyncio.wait_for(self._handshake(), self._timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await self.stop()
            raise TransientSourceError(
                f"{self._dataset}: cannot open the message connection to NATS at "
                f"{self._host}:{self._port}: {type(exc).__name__}: {exc}",
                dataset=self._dataset,
                hint=tls_failure(exc),
            ) from None
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _handshake(self) -> None:
        assert self._reader is not None and self._writer is not None
        line = await self._reader.readuntil(_CRLF)
        if not line.startswith(b"INFO "):
            raise SourceError(
                f"{self._dataset}: {self._host}:{self._port} is not a NATS server "
                f"(it said {line[:40]!r})",
                dataset=self._dataset,
            )
        info = json.loads(line[5:])
        if info.get("tls_required") or self._tls is not None:
            await self._writer.start_tls(
                self._tls or ssl.create_default_context(),
                server_hostname=self._server_name or self._host,
            )
        options = {
            "verbose": False,
            "pedantic": False,
            "lang": "python",
            "version": "lakeforge",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "name": self._name,
            **self._credentials,
        }
        self._writer.write(b"CONNECT " + orjson.dumps(options) + b"\r\nPING\r\n")
        await self._writer.drain()
        while True:
            line = await self._reader.readuntil(_CRLF)
            if line.startswith(b"PONG"):
                break
            if line.startswith(b"-ERR"):
                raise SourceError(
                    f"{self._dataset}: NATS refused the message connection: "
                    f"{line[5:].strip().decode('utf-8', 'replace')}",
                    dataset=self._dataset,
                    hint="check the source's credentials (user/password, token)",
                )
            # +OK, INFO updates, PING before CONNECT was taken: nothing to do yet
        self._writer.write(f"SUB {self._inbox}.* 1\r\n".encode())
        await self._writer.drain()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send(self, subject: str, payload: bytes, reply: str) -> None:
        assert self._writer is not None, "start() first"
        if self._task is not None and self._task.done():
            raise self._closed()
        self._writer.write(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + _CRLF)
        await self._writer.drain()

    def _closed(self) -> SourceError:
        return TransientSourceError(
            f"{self._dataset}: the message connection to NATS at {self._host}:{self._port} "
            "was closed",
            dataset=self._dataset,
        )

    async def _read_loop(self) -> None:
        assert self._reader is not None
        buffer = b""
        try:
            while True:
                chunk = await self._reader.read(_READ)
                if not chunk:
                    raise self._closed()
                buffer = self._parse(buffer + chunk if buffer else chunk)
        except SourceError as exc:
            self._fail(exc)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._fail(
                TransientSourceError(
                    f"{self._dataset}: reading from NATS failed: {exc}", dataset=self._dataset
                )
            )

    def _parse(self, data: bytes) -> bytes:
        """Handle every complete frame of ``data``; returns the incomplete rest."""
        find = data.find
        size = len(data)
        pos = 0
        while pos < size:
            eol = find(_CRLF, pos)
            if eol < 0:
                break
            head = data[pos:eol]
            start = eol + 2
            if head.startswith(b"MSG "):
                parts = head.split(b" ")
                length = int(parts[-1])
                end = start + length
                if end + 2 > size:
                    break
                reply = parts[3].decode() if len(parts) == 5 else ""
                self._accept(data[start:end], parts[1].decode(), reply, None)
                pos = end + 2
            elif head.startswith(b"HMSG "):
                parts = head.split(b" ")
                header_length, length = int(parts[-2]), int(parts[-1])
                end = start + length
                if end + 2 > size:
                    break
                subject = parts[1].decode()
                code, description, headers = _headers(data[start : start + header_length])
                payload = data[start + header_length : end]
                if code and not payload:
                    self._status(subject, code, description)
                else:
                    reply = parts[3].decode() if len(parts) == 6 else ""
                    self._accept(payload, subject, reply, headers or None)
                pos = end + 2
            else:
                self._control(head)
                pos = start
        return data[pos:]

    def _control(self, head: bytes) -> None:
        if head == b"PING":
            assert self._writer is not None
            self._writer.write(b"PONG\r\n")
        elif head.startswith(b"-ERR"):
            message = head[5:].strip().decode("utf-8", "replace")
            raise TransientSourceError(
                f"{self._dataset}: NATS closed the message connection: {message}",
                dataset=self._dataset,
            )
        # +OK, PONG, INFO (cluster updates): nothing to do


def _headers(block: bytes) -> tuple[str, str, dict[str, str]]:
    """(status code, description, headers) of an HMSG header block
    (``NATS/1.0[ code[ description]]`` then ``Key: Value`` lines)."""
    lines = block.decode("utf-8", "replace").split("\r\n")
    status = lines[0].split(" ", 2)
    code = status[1] if len(status) > 1 else ""
    description = status[2] if len(status) > 2 else ""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return code, description, headers


def wire_credentials(connected_url: Any, options: dict[str, Any]) -> dict[str, str] | None:
    """The CONNECT credentials of the wire connection from what nats-py was given, or None
    when the wire reader cannot authenticate that way (a creds file)."""
    if options.get("user_credentials") is not None:
        return None
    # nats-py's order: user and password given, else a token, else the server URL's
    # user part (with a password: user and password; without: a token).
    user, password = options.get("user"), options.get("password")
    if user is not None and password is not None:
        return {"user": user, "pass": password}
    if options.get("token") is not None:
        return {"auth_token": options["token"]}
    url_user = getattr(connected_url, "username", None)
    if url_user is None:
        return {}
    url_password = getattr(connected_url, "password", None)
    if url_password is None:
        return {"auth_token": url_user}
    return {"user": url_user, "pass": url_password}


__all__ = ["WirePuller", "wire_credentials"]
