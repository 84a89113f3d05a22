"""Message payload decoding shared by the broker sources: JSON, Avro, Protobuf, text."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from pydantic import ValidationError

from lakeforge.errors import ConfigError
from lakeforge.sources.payloads import MESSAGE_INDEX, PayloadConfig, PayloadDecoder

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
