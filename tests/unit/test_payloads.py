"""Message payload decoding shared by the broker sources: JSON, Avro, Protobuf, text."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lakeforge.errors import ConfigError
from lakeforge.sources.payloads import (
    MESSAGE_INDEX,
    PayloadConfig,
    PayloadDecoder,
    _json_block,
)

AVRO_SCHEMA = {
    "type": "record",
    "name": "Reading",
    "fields": [
        {"name": "device", "type": "string"},
        {"name": "temp", "type": "double"},
        {"name": "seq", "type": "long"},
    ],
}

PROTO = """
syntax = "proto3";
package iot;
message Reading {
  string device = 1;
  double temp = 2;
  int64 seq = 3;
  enum Kind { UNKNOWN = 0; SENSOR = 1; }
  Kind kind = 4;
}
"""


def decoder(tmp_path: Path, **config: object) -> PayloadDecoder:
    return PayloadDecoder(PayloadConfig(**config), tmp_path, "events")  # type: ignore[arg-type]


def test_json_objects_and_dead_letters_keep_message_order(tmp_path: Path) -> None:
    payloads = [
        b'{"id": 1, "v": "a"}',
        b"{not json",
        b"[1, 2]",
        None,
        '{"id": 5, "v": "\u00e9t\u00e9"}'.encode(),
    ]
    table, rejects = decoder(tmp_path).decode(payloads, "kafka://t/0", [10, 11, 12, 13, 14])
    rows = table.to_pylist()
    assert [(r["id"], r["v"], r[MESSAGE_INDEX]) for r in rows] == [(1, "a", 0), (5, "été", 4)]
    assert rejects is not None
    dead = rejects.to_pylist()
    assert [(d["line"], d["source_file"]) for d in dead] == [
        (11, "kafka://t/0"),
        (12, "kafka://t/0"),
        (13, "kafka://t/0"),
    ]
    assert dead[0]["error"].startswith("invalid JSON")
    assert dead[1]["error"] == "expected a JSON object, found list"
    assert dead[2]["error"] == "empty message" and dead[2]["raw"] is None


def test_json_types_that_disagree_are_widened_not_rejected(tmp_path: Path) -> None:
    payloads = [b'{"id": 1, "v": 1}', b'{"id": 2, "v": "two"}', b'{"id": 3, "w": [1]}']
    table, rejects = decoder(tmp_path).decode(payloads, "o", [1, 2, 3])
    assert rejects is None
    rows = table.to_pylist()
    # As for NDJSON files: a field with values of several types holds them as JSON text.
    assert [r["v"] for r in rows] == ["1", '"two"', None]
    assert [r[MESSAGE_INDEX] for r in rows] == [0, 1, 2]


def test_avro_with_and_without_the_confluent_header(tmp_path: Path) -> None:
    import fastavro

    (tmp_path / "reading.avsc").write_text(json.dumps(AVRO_SCHEMA))
    parsed = fastavro.parse_schema(AVRO_SCHEMA)

    def encode(record: dict) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, record)
        return out.getvalue()

    plain = encode({"device": "d1", "temp": 21.5, "seq": 1})
    framed = b"\x00" + struct.pack(">I", 42) + encode({"device": "d2", "temp": -3.0, "seq": 2})
    dec = decoder(tmp_path, format="avro", schema_file="reading.avsc")
    table, rejects = dec.decode([plain, b"\x02garbage", framed], "nats://s", [1, 2, 3])
    assert [(r["device"], r["temp"], r["seq"]) for r in table.to_pylist()] == [
        ("d1", 21.5, 1),
        ("d2", -3.0, 2),
    ]
    assert rejects is not None and rejects.to_pylist()[0]["line"] == 2
    assert rejects.to_pylist()[0]["error"].startswith("invalid Avro")


@pytest.mark.parametrize("as_descriptor_set", [False, True])
def test_protobuf_from_a_proto_file_or_a_descriptor_set(
    tmp_path: Path, as_descriptor_set: bool
) -> None:
    from google.protobuf import message_factory

    from lakeforge.sources.payloads import _compile_proto

    (tmp_path / "reading.proto").write_text(PROTO)
    schema = "reading.proto"
    if as_descriptor_set:
        (tmp_path / "reading.desc").write_bytes(_compile_proto(tmp_path / "reading.proto", "x"))
        schema = "reading.desc"
    dec = decoder(tmp_path, format="protobuf", schema_file=schema, message="iot.Reading")
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(_compile_proto(tmp_path / "reading.proto", "x"))
    reading = message_factory.GetMessages(list(files.file))["iot.Reading"]
    big = reading(device="d1", temp=1.25, seq=2**40, kind=1).SerializeToString()
    empty = reading().SerializeToString()  # all defaults: zero bytes on the wire
    table, rejects = dec.decode([big, b"\xff\xff\xff", empty or b"\x00"], "mqtt://t", [1, 2, 3])
    rows = table.to_pylist()
    assert rows[0]["device"] == "d1" and rows[0]["temp"] == 1.25
    assert int(rows[0]["seq"]) == 2**40 and rows[0]["kind"] == "SENSOR"
    assert rejects is not None and rejects.to_pylist()[0]["line"] == 2


def test_text_and_bytes_keep_every_message(tmp_path: Path) -> None:
    table, rejects = decoder(tmp_path, format="text").decode([b"a", b"\xff", None], "o", [1, 2, 3])
    assert rejects is None
    assert [r["value"] for r in table.to_pylist()] == ["a", "\ufffd", None]
    raw, _ = decoder(tmp_path, format="bytes").decode([b"\x00\x01"], "o", [1])
    assert raw.to_pylist()[0]["value"] == b"\x00\x01"


def test_configuration_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs schema_file"):
        PayloadConfig(format="avro")
    with pytest.raises(ValidationError, match="needs message"):
        PayloadConfig(format="protobuf", schema_file="x.proto")
    with pytest.raises(ValidationError, match="apply to avro and protobuf"):
        PayloadConfig(format="json", schema_file="x.avsc")
    dec = decoder(tmp_path, format="avro", schema_file="missing.avsc")
    with pytest.raises(ConfigError, match=r"missing\.avsc not found"):
        dec.decode([b"\x02"], "o", [1])
    (tmp_path / "reading.proto").write_text(PROTO)
    wrong = decoder(tmp_path, format="protobuf", schema_file="reading.proto", message="iot.Nope")
    with pytest.raises(ConfigError, match=r"it has: iot\.Reading"):
        wrong.decode([b"\x00"], "o", [1])


def test_keys_that_only_later_messages_have_are_kept(tmp_path: Path) -> None:
    payloads = [b'{"id": 1}', b'{"id": 2, "late": "x"}', b'{"id": 3, "n": null}']
    table, rejects = decoder(tmp_path).decode(payloads, "o", [1, 2, 3])
    assert rejects is None
    assert table.column("late").to_pylist() == [None, "x", None]
    # A field null in every message is text, not Arrow's unstorable null type.
    assert str(table.schema.field("n").type) == "string"
    assert table.column("n").to_pylist() == [None, None, None]


# -- the JSON block reader ---------------------------------------------------------------

_KEYS = st.sampled_from(["id", "v", "ts", "nested", "tags", "é", "a b", ""])
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63 - 10, max_value=2**64 + 10),  # around int64's end
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["2024-01-01", "2024-01-01T10:00:00Z", "2024-01-01 10:00:00", "10:00"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)),
    max_leaves=6,
)
_DOCUMENT = st.dictionaries(_KEYS, _VALUES, max_size=5).map(
    lambda d: json.dumps(d, ensure_ascii=False).encode()
)
_ODD = st.sampled_from(
    [b"", b"  ", b"{oops", b"[1, 2]", b"42", b'{"v": NaN}', b'{"v": Infinity}',
     b'\xef\xbb\xbf{"v": 1}', b'{"v": 1} {"v": 2}', b'{\n  "v": 1\n}', b'{"v": "a\nb"}',
     b'{"v": 1, "v": 2}', b'{"v": 1e400}', b'{"v": 12345678901234567890}']
)  # fmt: skip


def _objects(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of ``fields`` (name → strategy of its values), each may be null."""
    return st.fixed_dictionaries({}, optional={k: st.none() | v for k, v in fields.items()})


def _huge(value: Any) -> bool:
    """Whether ``value`` holds a number of magnitude 2**63 or more."""
    if isinstance(value, dict):
        return any(_huge(v) for v in value.values())
    if isinstance(value, list):
        return any(_huge(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) >= 2**63


def _same_as_one_by_one(tmp_path: Path, payloads: list[bytes]) -> bool:
    """Whether the block reader took ``payloads``; when it did, its table equals the
    one-by-one reading's (schema and values), which has no dead letter."""
    block = _json_block(payloads)
    if block is None:
        return False
    records, rejects = decoder(tmp_path).decode_each(payloads, "x", [None] * len(payloads))
    assert rejects is None, rejects.column("error").to_pylist()
    records = records.drop_columns([MESSAGE_INDEX])
    assert block.schema == records.schema
    assert block.to_pylist() == records.to_pylist()
    return True


# Batches whose messages agree on each field's type (missing fields and nulls allowed): the
# block reader takes most of them, so the comparison is made, not declined.
_TYPED_LEAVES = st.sampled_from(
    [
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.integers(min_value=2**63 - 5, max_value=2**64 + 5),
        st.floats(allow_nan=False, allow_infinity=False),
        st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6)),  # ints and floats mixed
        st.text(max_size=12),
        st.sampled_from(["2024-01-01", "2024-01-01T10:00:00Z", "2024-01-01 10:00:00"]),
        st.booleans(),
    ]
)
_TYPED_VALUES = st.recursive(
    _TYPED_LEAVES,
    lambda inner: st.one_of(
        inner.map(lambda v: st.lists(v, max_size=3)),
        st.dictionaries(_KEYS, inner, min_size=1, max_size=3).map(_objects),
    ),
    max_leaves=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_json_block_reader_reads_typed_batches_as_one_by_one(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    fields = data.draw(st.dictionaries(_KEYS, _TYPED_VALUES, min_size=1, max_size=6))
    documents = data.draw(st.lists(_objects(fields), min_size=32, max_size=60))
    payloads = [json.dumps(d, ensure_ascii=False).encode() for d in documents]
    took = _same_as_one_by_one(tmp_path_factory.mktemp("block"), payloads)
    # Declined only for a number of magnitude 2**63 or more (an integer that may not fit
    # int64, which the one-by-one path widens; a float that large is declined with it).
    assert took or _huge(documents)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents=st.lists(_DOCUMENT, min_size=32, max_size=60),
    odd=st.lists(st.tuples(st.integers(0, 59), _ODD), max_size=2),
)
def test_the_json_block_reader_reads_as_one_by_one_or_declines(
    tmp_path_factory: pytest.TempPathFactory,
    documents: list[bytes],
    odd: list[tuple[int, bytes]],
) -> None:
    payloads = list(documents)
    for at, payload in odd:
        payloads.insert(min(at, len(payloads)), payload)
    _same_as_one_by_one(tmp_path_factory.mktemp("block"), payloads)


def test_the_json_block_reader_takes_plain_events_and_keeps_timestamps_as_text(
    tmp_path: Path,
) -> None:
    events = [
        orjson.dumps({"id": i, "at": f"2024-06-01T10:00:{i % 60:02d}Z", "amount": i / 4,
                      "device": {"os": "ios", "since": "2024-01-01"}, "tags": ["a"] * (i % 3),
                      "note": None if i % 2 else "é"})
        for i in range(100)
    ]  # fmt: skip
    assert _same_as_one_by_one(tmp_path, events)
    table, rejects = decoder(tmp_path).decode(events, "x", [None] * len(events))
    assert rejects is None and table.num_rows == 100
    assert str(table.schema.field("at").type) == "string"
    assert table.column("at")[0].as_py() == "2024-06-01T10:00:00Z"
    # One bad message: the whole batch is read one by one, and it is a dead letter.
    table, rejects = decoder(tmp_path).decode(
        [*events[:50], b"{oops", *events[50:]], "x", list(range(101))
    )
    assert table.num_rows == 100 and rejects is not None
    assert rejects.column("line").to_pylist() == [50]
