"""Decoder of ``pgoutput``, PostgreSQL's logical replication protocol (version 1).

A logical replication slot read with the ``pgoutput`` plugin sends one binary message per
XLogData frame: ``Begin``, then the transaction's changes (``Insert``, ``Update``,
``Delete``, ``Truncate``, preceded by a ``Relation`` message describing a table the first
time it appears in a session and after each schema change), then ``Commit``. Transactions
come whole and in commit order (protocol version 1 does not stream transactions in
progress). The format is PostgreSQL's "Logical Replication Message Formats" (protocol
chapter); integers are big-endian, strings NUL-terminated.

Column values come in PostgreSQL's text output (``t``), or as ``n`` (NULL) or ``u``
(unchanged TOASTed value: the server did not send it because the update did not touch
it). :data:`UNCHANGED` stands for the latter, so no placeholder can be mistaken for a
value. Converting the text to typed values is ``pg_arrow``'s job.

The decoder is pure Python and needs no database: every message type has a unit test.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
PG_EPOCH_US: Final = 946_684_800_000_000


class _Unchanged:
    """The value of a TOASTed column an update did not change (tuple kind ``u``)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()

#: One column value: None (NULL), UNCHANGED, text, or bytes (binary format, not requested).
Value = str | bytes | _Unchanged | None


class ProtocolError(ValueError):
    """A message that is not valid pgoutput (version 1)."""


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # the LSN of the transaction's commit record
    commit_ts: int  # microseconds since the Unix epoch (UTC)
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # the end of the commit record: where a slot resumes after this transaction
    commit_ts: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    key: bool  # part of the replica identity


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str  # "" for pg_catalog
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{self.namespace or 'pg_catalog'}.{self.name}"


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    old_kind: str | None  # "K" (key columns: the key changed), "O" (REPLICA IDENTITY FULL)
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old_kind: str  # "K" or "O"
    old: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage
)

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">bQQq")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _unpack(self, fmt: struct.Struct) -> int:
        try:
            (value,) = fmt.unpack_from(self.data, self.pos)
        except struct.error:
            raise ProtocolError(
                f"message ends at byte {len(self.data)}, inside a field at byte {self.pos}"
            ) from None
        self.pos += fmt.size
        return int(value)

    def byte(self) -> str:
        if self.pos >= len(self.data):
            raise ProtocolError(f"message ends at byte {self.pos}, a byte was expected")
        value = chr(self.data[self.pos])
        self.pos += 1
        return value

    def int8(self) -> int:
        return self._unpack(_I8)

    def int16(self) -> int:
        return self._unpack(_I16)

    def int32(self) -> int:
        return self._unpack(_I32)

    def uint32(self) -> int:
        return self._unpack(_U32)

    def int64(self) -> int:
        return self._unpack(_I64)

    def lsn(self) -> int:
        return self._unpack(_U64)

    def timestamp(self) -> int:
        return self._unpack(_I64) + PG_EPOCH_US

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError(f"string at byte {self.pos} is not NUL-terminated")
        value = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return value

    def raw(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise ProtocolError(f"{size} bytes at byte {self.pos} overrun the message")
        value = self.data[self.pos : end]
        self.pos = end
        return value

    def tuple_data(self) -> tuple[Value, ...]:
        # The hot loop of decoding: locals, one bounds check per value.
        data, pos = self.data, self.pos
        size = len(data)
        if pos + 2 > size:
            raise ProtocolError(f"message ends at byte {size}, inside a field at byte {pos}")
        (count,) = _I16.unpack_from(data, pos)
        pos += 2
        values: list[Value] = []
        append = values.append
        for _ in range(count):
            if pos >= size:
                raise ProtocolError(f"message ends at byte {pos}, a byte was expected")
            kind = data[pos]
            pos += 1
            if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary
                if pos + 4 > size:
                    raise ProtocolError(
                        f"message ends at byte {size}, inside a field at byte {pos}"
                    )
                (length,) = _I32.unpack_from(data, pos)
                end = pos + 4 + length
                if length < 0 or end > size:
                    raise ProtocolError(f"{length} bytes at byte {pos + 4} overrun the message")
                raw = data[pos + 4 : end]
                append(raw.decode("utf-8") if kind == 0x74 else raw)
                pos = end
            elif kind == 0x6E:  # 'n'
                append(None)
            elif kind == 0x75:  # 'u'
                append(UNCHANGED)
            else:
                raise ProtocolError(f"unknown tuple data kind {chr(kind)!r} at byte {pos - 1}")
        self.pos = pos
        return tuple(values)

    def end(self, message: Message) -> Message:
        if self.pos != len(self.data):
            raise ProtocolError(
                f"{len(self.data) - self.pos} unexpected byte(s) after a {type(message).__name__}"
            )
        return message


def decode(payload: bytes) -> Message:
    """One pgoutput message (the payload of an XLogData frame)."""
    if not payload:
        raise ProtocolError("empty message")
    data = bytes(payload)
    kind = chr(data[0])
    if kind == "B" and len(data) == _BEGIN.size + 1:
        final_lsn, ts, xid = _BEGIN.unpack_from(data, 1)
        return Begin(final_lsn, ts + PG_EPOCH_US, xid)
    if kind == "C" and len(data) == _COMMIT.size + 1:
        flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(data, 1)
        return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_US)
    r = _Reader(data)
    r.pos = 1
    if kind in ("B", "C"):  # of the wrong size
        name, size = ("Begin", _BEGIN.size + 1) if kind == "B" else ("Commit", _COMMIT.size + 1)
        if len(data) < size:
            raise ProtocolError(f"message ends at byte {len(data)}: a {name} has {size}")
        raise ProtocolError(f"{len(data) - size} unexpected byte(s) after a {name}")
    if kind == "O":
        return r.end(Origin(r.lsn(), r.string()))
    if kind == "R":
        relid, namespace, name = r.uint32(), r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.int16()):
            flags = r.int8()
            columns.append(Column(r.string(), r.uint32(), r.int32(), bool(flags & 1)))
        return r.end(Relation(relid, namespace, name, identity, tuple(columns)))
    if kind == "Y":
        return r.end(Type(r.uint32(), r.string(), r.string()))
    if kind == "I":
        relid = r.uint32()
        if (marker := r.byte()) != "N":
            raise ProtocolError(f"insert: expected 'N', found {marker!r}")
        return r.end(Insert(relid, r.tuple_data()))
    if kind == "U":
        relid = r.uint32()
        marker = r.byte()
        old_kind, old = None, None
        if marker in ("K", "O"):
            old_kind, old = marker, r.tuple_data()
            marker = r.byte()
        if marker != "N":
            raise ProtocolError(f"update: expected 'K', 'O' or 'N', found {marker!r}")
        return r.end(Update(relid, old_kind, old, r.tuple_data()))
    if kind == "D":
        relid = r.uint32()
        marker = r.byte()
        if marker not in ("K", "O"):
            raise ProtocolError(f"delete: expected 'K' or 'O', found {marker!r}")
        return r.end(Delete(relid, marker, r.tuple_data()))
    if kind == "T":
        count, options = r.int32(), r.int8()
        relids = tuple(r.uint32() for _ in range(count))
        return r.end(Truncate(relids, bool(options & 1), bool(options & 2)))
    if kind == "M":
        flags, lsn, prefix = r.int8(), r.lsn(), r.string()
        return r.end(LogicalMessage(bool(flags & 1), lsn, prefix, r.raw(r.int32())))
    raise ProtocolError(
        f"unsupported message type {kind!r} (pgoutput protocol version 1 is read: "
        "streamed transactions and two-phase commits are not requested)"
    )


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL writes it (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """An LSN from PostgreSQL's ``X/Y`` text."""
    high, _, low = text.partition("/")
    if not low:
        raise ValueError(f"not an LSN: {text!r} (expected X/Y in hexadecimal)")
    return (int(high, 16) << 32) | int(low, 16)
