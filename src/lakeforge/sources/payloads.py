"""Message payloads → Arrow records: JSON, Avro and Protobuf, for every broker source.

A broker source (Kafka, NATS JetStream, Redis Streams, MQTT, HTTP push) receives a list of
payloads (bytes) and hands them to :class:`PayloadDecoder`, which returns

- the records, one row per decodable message, in message order, with a ``__lf_message``
  column holding each row's index in the input list (the source joins its metadata —
  offset, key, timestamp — on it and drops it);
- the rejects, in the dead-letter schema (``dead_letters.reject_schema``): the raw payload,
  the error, and the message's origin (``origin`` → ``source_file``, its offset or
  sequence → ``line``).

Formats:

- ``json`` (default): one JSON object per message. Types are inferred over the whole
  batch; a field whose types disagree between messages is widened (DuckDB's reader, as for
  NDJSON files: numbers to a wider number, mixed kinds to JSON text) rather than rejected.
- ``avro``: schemaless Avro binary with the writer schema in ``schema_file`` (``.avsc``);
  the Confluent wire format (magic byte 0 + 4-byte schema id) is recognised and stripped.
- ``protobuf``: ``schema_file`` is a ``.proto`` file (compiled on first use; needs
  ``grpcio-tools``) or a descriptor set (``protoc --descriptor_set_out``, ``.desc`` /
  ``.pb``), and ``message`` the full name of the message type. Field names are kept as
  declared; 64-bit integers stay integers; enums are their names.
- ``text`` / ``bytes``: no decoding; one ``value`` column.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from lakeforge.engines.connection import connect
from lakeforge.errors import ConfigError
from lakeforge.extras import require

if TYPE_CHECKING:
    import pyarrow as pa

MESSAGE_INDEX = "__lf_message"
PayloadFormat = Literal["json", "avro", "protobuf", "text", "bytes"]
_CONFLUENT_MAGIC = 0
# The JSON block reader (see _json_block): used from this many payloads on, with blocks of
# at least this size; what it reads differently from the one-by-one path is declined.
_BLOCK_MIN = 32
_BLOCK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_INT64_END = 2.0**63


class PayloadConfig(BaseModel):
    """How a broker source decodes its messages (``payload:`` in a source)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: PayloadFormat = "json"
    schema_file: str | None = None
    message: str | None = None  # protobuf: the message type's full name

    @model_validator(mode="after")
    def _schema_needed(self) -> PayloadConfig:
        if self.format in ("avro", "protobuf") and not self.schema_file:
            raise ValueError(f"payload format {self.format} needs schema_file")
        if self.format == "protobuf" and not self.message:
            raise ValueError("payload format protobuf needs message (the message type's name)")
        if self.format not in ("avro", "protobuf") and (self.schema_file or self.message):
            raise ValueError(
                f"schema_file and message apply to avro and protobuf, not {self.format}"
            )
        return self


class PayloadDecoder:
    """Decodes the payloads of one source; schemas are loaded once."""

    def __init__(self, config: PayloadConfig, project_root: Path, dataset: str) -> None:
        self.config = config
        self.dataset = dataset
        self._root = project_root
        self._avro_schema: Any = None
        self._proto_class: Any = None

    def decode(
        self, payloads: Sequence[bytes | None], origin: str, positions: Sequence[int | None]
    ) -> tuple[pa.Table, pa.Table | None]:
        """(records with ``__lf_message``, rejects or None) of ``payloads``.

        Args:
            payloads: the messages' bodies (None: an empty body, e.g. a Kafka tombstone).
            origin: where they come from, for the dead letters (``kafka://topic/0``).
            positions: each message's offset / sequence (the dead letter's ``line``).
        """
        fmt = self.config.format
        if fmt in ("text", "bytes"):
            return self._raw(payloads), None
        if fmt == "json":
            block = _json_block(payloads)
            if block is not None:
                return block.append_column(MESSAGE_INDEX, _int64(range(len(payloads)))), None
        return self.decode_each(payloads, origin, positions)

    def decode_each(
        self, payloads: Sequence[bytes | None], origin: str, positions: Sequence[int | None]
    ) -> tuple[pa.Table, pa.Table | None]:
        """:meth:`decode`, one message at a time (what the JSON block reader must equal)."""
        from lakeforge.sources import dead_letters

        fmt = self.config.format
        good: list[Any] = []
        index: list[int] = []
        bad: list[tuple[bytes | None, str, str, int | None]] = []
        convert = {"json": self._json, "avro": self._avro, "protobuf": self._protobuf}[fmt]
        for i, payload in enumerate(payloads):
            if payload is None or not payload:
                bad.append((payload, "empty message", origin, positions[i]))
                continue
            try:
                good.append(convert(payload))
            except _Undecodable as exc:
                bad.append((payload, str(exc), origin, positions[i]))
                continue
            index.append(i)
        table = self._table(good, fmt)
        table = table.append_column(MESSAGE_INDEX, _int64(index))
        return table, dead_letters.rejects(bad) if bad else None

    # -- formats ---------------------------------------------------------------------------

    @staticmethod
    def _json(payload: bytes) -> Any:
        import orjson

        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise _Undecodable(f"invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise _Undecodable(f"expected a JSON object, found {type(value).__name__}")
        return value

    def _avro(self, payload: bytes) -> Any:
        import io

        fastavro = require("fastavro")
        if self._avro_schema is None:
            self._avro_schema = self._load_avro_schema()
        body = payload
        if len(body) > 5 and body[0] == _CONFLUENT_MAGIC:
            body = body[5:]  # Confluent wire format: magic byte + schema id
        try:
            stream = io.BytesIO(body)
            record = fastavro.schemaless_reader(stream, self._avro_schema, None)
            if stream.tell() != len(body):
                raise ValueError(f"{len(body) - stream.tell()} byte(s) left after the record")
        except Exception as exc:  # fastavro raises many types on bad input
            raise _Undecodable(f"invalid Avro: {type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict):
            raise _Undecodable("the Avro schema is not a record")
        return record

    def _protobuf(self, payload: bytes) -> Any:
        require("google.protobuf")
        from google.protobuf.json_format import MessageToDict
        from google.protobuf.message import DecodeError

        if self._proto_class is None:
            self._proto_class = self._load_proto_class()
        message = self._proto_class()
        try:
            message.ParseFromString(payload)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise _Undecodable(f"invalid Protobuf ({self.config.message}): {exc}") from None
        return MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )

    # -- schemas ---------------------------------------------------------------------------

    def _schema_path(self) -> Path:
        assert self.config.schema_file is not None
        path = Path(self.config.schema_file)
        path = path if path.is_absolute() else self._root / path
        if not path.is_file():
            raise ConfigError(
                f"{self.dataset}: payload schema file {self.config.schema_file} not found",
                dataset=self.dataset,
                hint="schema_file is relative to the project root",
            )
        return path

    def _load_avro_schema(self) -> Any:
        import orjson

        fastavro = require("fastavro")
        path = self._schema_path()
        try:
            return fastavro.parse_schema(orjson.loads(path.read_bytes()))
        except Exception as exc:
            raise ConfigError(
                f"{self.dataset}: {path.name} is not a valid Avro schema: {exc}",
                dataset=self.dataset,
            ) from None

    def _load_proto_class(self) -> Any:
        require("google.protobuf")
        from google.protobuf import descriptor_pb2, message_factory

        path = self._schema_path()
        descriptors = descriptor_pb2.FileDescriptorSet()
        if path.suffix == ".proto":
            descriptors.ParseFromString(_compile_proto(path, self.dataset))
        else:
            try:
                descriptors.ParseFromString(path.read_bytes())
            except Exception as exc:
                raise ConfigError(
                    f"{self.dataset}: {path.name} is not a Protobuf descriptor set: {exc}",
                    dataset=self.dataset,
                    hint="make one with protoc --include_imports --descriptor_set_out=FILE",
                ) from None
        classes = message_factory.GetMessages(list(descriptors.file))
        name = self.config.message or ""
        if name not in classes:
            known = ", ".join(sorted(classes)) or "none"
            raise ConfigError(
                f"{self.dataset}: message type {name!r} is not in {path.name} (it has: {known})",
                dataset=self.dataset,
            )
        return classes[name]

    # -- tables ----------------------------------------------------------------------------

    def _raw(self, payloads: Sequence[bytes | None]) -> pa.Table:
        import pyarrow as pa

        if self.config.format == "text":
            values = pa.array(
                [None if p is None else p.decode("utf-8", "replace") for p in payloads],
                pa.string(),
            )
        else:
            values = pa.array(list(payloads), pa.binary())
        return pa.table({"value": values, MESSAGE_INDEX: _int64(range(len(payloads)))})

    @staticmethod
    def _table(records: list[Any], fmt: str) -> pa.Table:
        import pyarrow as pa

        if not records:
            return pa.table({})
        # A struct array infers its fields from every record (from_pylist would take the
        # first record's keys only, dropping a field that only later messages carry).
        try:
            table = pa.Table.from_struct_array(pa.array(records))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            if fmt != "json":
                raise
            table = _widened(records)
        return _typed_nulls(table)


def _json_block(payloads: Sequence[bytes | None]) -> pa.Table | None:
    """Every payload read at once by Arrow's JSON reader, or None where that could differ
    from reading them one by one (orjson, then Arrow's inference over the Python records).

    The block reader builds no Python object a record (several times faster, and no garbage
    for the collector); it reads newline-delimited JSON, so it is used only where each
    payload is one line holding one document, and where its reading is the same:

    - a payload with a newline (a pretty-printed document: one line each is needed), empty
      or blank (a dead letter), or starting with a byte-order mark (the block reader takes
      it, orjson does not): declined;
    - a float that is NaN or infinite (the block reader takes the ``NaN``/``Infinity``
      literals, standard JSON has none), or of magnitude 2**63 or more (an integer too big
      for int64, which the block reader makes a float silently and the one-by-one path
      widens): declined, after the read;
    - a document that is not an object, a syntax error, a type that changes between
      documents: the block reader fails, and the one-by-one path finds the bad messages;
    - a string the block reader takes for a timestamp stays text, as it is one by one:
      the block is read again with those fields declared as strings.
    """
    import pyarrow as pa
    import pyarrow.json as pajson

    if len(payloads) < _BLOCK_MIN:
        return None
    for payload in payloads:
        if not payload or not payload.strip():
            return None
    text = b"\n".join(payloads)  # type: ignore[arg-type]  # None declined above
    if text.count(b"\n") != len(payloads) - 1:
        return None
    if text.startswith(_BOM) or b"\n" + _BOM in text:
        return None
    widest = max(map(len, payloads))  # type: ignore[arg-type]
    options = pajson.ReadOptions(block_size=max(_BLOCK_BYTES, 2 * widest + 2))
    try:
        table = pajson.read_json(pa.BufferReader(text), read_options=options)
        if any(_has_timestamp(f.type) for f in table.schema):
            schema = pa.schema([f.with_type(_timestamps_as_text(f.type)) for f in table.schema])
            parse = pajson.ParseOptions(explicit_schema=schema)
            table = pajson.read_json(pa.BufferReader(text), read_options=options,
                                     parse_options=parse)  # fmt: skip
    except (pa.ArrowException, UnicodeDecodeError):
        return None
    if table.num_rows != len(payloads):
        return None
    if not all(_json_floats(column) for column in table.columns):
        return None
    return _typed_nulls(table)


def _json_floats(column: Any) -> bool:
    """Whether the float values in ``column`` (nested ones too) are all ones a JSON number
    gives one by one: not NaN, not infinite, of magnitude under 2**63 (see _json_block)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_floating(kind):
        if column.null_count == len(column):
            return True
        odd = pc.or_(pc.is_nan(column), pc.greater_equal(pc.abs(column), _INT64_END))
        return not pc.any(odd).as_py()  # an infinity's magnitude is over 2**63 too
    if pa.types.is_struct(kind):
        return all(_json_floats(field) for field in column.flatten())
    if pa.types.is_list(kind):
        return _json_floats(pc.list_flatten(column))
    return True


def _has_timestamp(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_timestamp(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_timestamp(f.type) for f in t)
    if pa.types.is_list(t):
        return _has_timestamp(t.value_type)
    return False


def _timestamps_as_text(t: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_timestamp(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_timestamps_as_text(f.type)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_timestamps_as_text(t.value_type)))
    return t


class _Undecodable(Exception):
    """A payload that cannot be decoded: it becomes a dead letter."""


def _typed_nulls(table: Any) -> Any:
    """A column null in every message has Arrow's null type, which a table cannot store:
    it becomes text (a later batch with values widens it as the schema policy allows)."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_null(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
    return table


def _int64(values: Any) -> Any:
    import pyarrow as pa

    return pa.array(list(values), pa.int64())


def _widened(records: list[Any]) -> pa.Table:
    """Records whose field types disagree: read by DuckDB over every record, which widens a
    column to a type that holds all its values (to text as the last resort)."""
    import orjson

    handle, temp = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(handle, "wb") as out:
            for record in records:
                out.write(orjson.dumps(record) + b"\n")
        con = connect()
        try:
            return con.execute(
                "SELECT * FROM read_json(?, format := 'newline_delimited', sample_size := -1)",
                [temp],
            ).to_arrow_table()
        finally:
            con.close()
    finally:
        os.unlink(temp)


def _compile_proto(path: Path, dataset: str) -> bytes:
    """A descriptor set for a ``.proto`` file, compiled with grpcio-tools' protoc."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise ConfigError(
            f"{dataset}: compiling {path.name} needs grpcio-tools, which is not installed",
            dataset=dataset,
            hint="pip install grpcio-tools, or give a descriptor set: "
            "protoc --include_imports --descriptor_set_out=schema.desc schema.proto",
        ) from None
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "schema.desc")
        code = protoc.main(
            [
                "protoc",
                f"--proto_path={path.parent}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                path.name,
            ]
        )
        if code != 0 or not os.path.exists(out):
            raise ConfigError(
                f"{dataset}: protoc could not compile {path.name} (exit {code})",
                dataset=dataset,
                hint="run protoc on it to see the error",
            )
        with open(out, "rb") as fh:
            return fh.read()
