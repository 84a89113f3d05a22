"""The pgoutput decoder, the text → Arrow conversion and the change records, without a
server: messages are built byte by byte as PostgreSQL's "Logical Replication Message
Formats" describe them (protocol version 1)."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from lakeforge.errors import SourceError
from lakeforge.sources import pgoutput
from lakeforge.sources.pg_arrow import arrow_type, to_array
from lakeforge.sources.pg_changes import ChangeDecoder, FeedSchema, seq_of, to_arrow
from lakeforge.sources.pg_replication import TableInfo
from lakeforge.sources.postgres_cdc_config import PostgresCdcConfig, parse_size

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def s(text: str) -> bytes:
    return text.encode() + b"\x00"


def tuple_data(*values: object) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is pgoutput.UNCHANGED:
            out += b"u"
        else:
            raw = str(v).encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


def begin(final_lsn: int, ts_us: int = 0, xid: int = 7) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, ts_us, xid)


def commit(commit_lsn: int, end_lsn: int, ts_us: int = 0) -> bytes:
    return b"C" + struct.pack(">bQQq", 0, commit_lsn, end_lsn, ts_us)


def relation(relid: int, ns: str, name: str, cols: list[tuple[str, int, int, bool]]) -> bytes:
    out = b"R" + struct.pack(">I", relid) + s(ns) + s(name) + b"d" + struct.pack(">h", len(cols))
    for col, oid, typmod, key in cols:
        out += struct.pack(">b", 1 if key else 0) + s(col) + struct.pack(">Ii", oid, typmod)
    return out


ORDERS = [
    ("id", 23, -1, True),
    ("amount", 1700, (10 << 16 | 2) + 4, False),
    ("body", 25, -1, False),
]


# -- decoding ----------------------------------------------------------------------------------


def test_begin_and_commit_carry_lsns_and_times() -> None:
    b = pgoutput.decode(begin(0x16B374D848, ts_us=1_000_000, xid=4242))
    assert b == pgoutput.Begin(0x16B374D848, pgoutput.PG_EPOCH_US + 1_000_000, 4242)
    c = pgoutput.decode(commit(0x100, 0x130, ts_us=5))
    assert c == pgoutput.Commit(0, 0x100, 0x130, pgoutput.PG_EPOCH_US + 5)
    when = dt.datetime.fromtimestamp(b.commit_ts / 1e6, dt.UTC)
    assert when == PG_EPOCH + dt.timedelta(seconds=1)


def test_relation_lists_columns_with_types_and_key_flags() -> None:
    rel = pgoutput.decode(relation(16384, "public", "orders", ORDERS))
    assert isinstance(rel, pgoutput.Relation)
    assert rel.qualified == "public.orders" and rel.replica_identity == "d"
    assert rel.columns[0] == pgoutput.Column("id", 23, -1, True)
    assert [c.key for c in rel.columns] == [True, False, False]
    # pg_catalog's namespace is sent as "".
    assert pgoutput.decode(relation(1, "", "x", [])).qualified == "pg_catalog.x"


def test_tuple_kinds_null_unchanged_text() -> None:
    msg = pgoutput.decode(b"I" + struct.pack(">I", 9) + b"N" + tuple_data("1", None, "é"))
    assert msg == pgoutput.Insert(9, ("1", None, "é"))
    upd = pgoutput.decode(
        b"U" + struct.pack(">I", 9) + b"N" + tuple_data("1", "2.00", pgoutput.UNCHANGED)
    )
    assert isinstance(upd, pgoutput.Update)
    assert upd.old is None and upd.new[2] is pgoutput.UNCHANGED


@pytest.mark.parametrize("kind", ["K", "O"])
def test_update_and_delete_with_old_tuples(kind: str) -> None:
    old = tuple_data("1", None, None) if kind == "K" else tuple_data("1", "1.00", "x")
    upd = pgoutput.decode(
        b"U" + struct.pack(">I", 9) + kind.encode() + old + b"N" + tuple_data("2", "1.00", "x")
    )
    assert isinstance(upd, pgoutput.Update) and upd.old_kind == kind and upd.old is not None
    assert upd.old[0] == "1" and upd.new[0] == "2"
    dele = pgoutput.decode(b"D" + struct.pack(">I", 9) + kind.encode() + old)
    assert isinstance(dele, pgoutput.Delete) and dele.old_kind == kind and dele.old[0] == "1"


def test_truncate_type_origin_and_message() -> None:
    t = pgoutput.decode(b"T" + struct.pack(">ib", 2, 3) + struct.pack(">II", 10, 11))
    assert t == pgoutput.Truncate((10, 11), cascade=True, restart_identity=True)
    assert pgoutput.decode(b"Y" + struct.pack(">I", 99) + s("public") + s("mood")) == (
        pgoutput.Type(99, "public", "mood")
    )
    assert pgoutput.decode(b"O" + struct.pack(">Q", 5) + s("node1")) == pgoutput.Origin(5, "node1")
    m = pgoutput.decode(b"M" + struct.pack(">bQ", 1, 77) + s("app") + struct.pack(">i", 2) + b"hi")
    assert m == pgoutput.LogicalMessage(True, 77, "app", b"hi")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", "empty"),
        (b"S" + b"\x00" * 4, "unsupported message type 'S'"),
        (b"B\x00\x00", "message ends"),
        (b"I" + struct.pack(">I", 1) + b"X", "expected 'N'"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"z", "unknown tuple"),
        (b"R" + struct.pack(">I", 1) + b"public", "NUL-terminated"),
        (commit(1, 2) + b"!", "unexpected byte"),
    ],
)
def test_malformed_messages_are_protocol_errors(payload: bytes, error: str) -> None:
    with pytest.raises(pgoutput.ProtocolError, match=error):
        pgoutput.decode(payload)


def test_lsn_text_round_trip() -> None:
    assert pgoutput.format_lsn(0x16B374D848) == "16/B374D848"
    assert pgoutput.parse_lsn("16/B374D848") == 0x16B374D848
    assert pgoutput.parse_lsn(pgoutput.format_lsn(0)) == 0
    with pytest.raises(ValueError, match="not an LSN"):
        pgoutput.parse_lsn("42")


# -- text → Arrow ------------------------------------------------------------------------------


def test_types_by_oid_and_typmod() -> None:
    assert arrow_type(21, -1) == arrow_type(23, -1) == arrow_type(20, -1) == pa.int64()
    assert arrow_type(1700, (12 << 16 | 3) + 4) == pa.decimal128(12, 3)
    assert arrow_type(1700, -1) == pa.string()  # unbounded numeric: exact as text
    assert arrow_type(1184, -1) == pa.timestamp("us", tz="UTC")
    assert arrow_type(3802, -1) == arrow_type(2950, -1) == arrow_type(123456, -1) == pa.string()


def test_values_convert_and_misfits_are_reported() -> None:
    ts, bad = to_array(["2026-12-03 06:57:28.681338+00", None], pa.timestamp("us", tz="UTC"))
    assert not bad and ts[0].as_py() == dt.datetime(2026, 12, 3, 6, 57, 28, 681338, dt.UTC)
    assert to_array(["t", "false", None], pa.bool_())[0].to_pylist() == [True, False, None]
    assert to_array(["\\x0102"], pa.binary())[0].to_pylist() == [b"\x01\x02"]
    assert to_array(["NaN", "-Infinity"], pa.float64())[0][1].as_py() == float("-inf")
    dec, bad = to_array(["1.50", "NaN", "2"], pa.decimal128(10, 2))
    assert dec.to_pylist() == [Decimal("1.50"), None, Decimal("2.00")]
    assert list(bad) == [1] and "'NaN' is not a valid decimal128(10, 2)" in bad[1]
    dates, bad = to_array(["2024-02-29", "infinity"], pa.date32())
    assert dates[0].as_py() == dt.date(2024, 2, 29) and list(bad) == [1]


# -- change records ----------------------------------------------------------------------------


def info(name: str = "public.orders", identity: str = "d") -> TableInfo:
    return TableInfo(name, 1, tuple((n, o, m) for n, o, m, _ in ORDERS), ("id",), identity)


def feed(decoder: ChangeDecoder, *payloads: bytes) -> list:
    out = []
    for p in payloads:
        out.extend(decoder.handle(pgoutput.decode(p)))
    return out


def decoder(skip: tuple[int, int] | None = None) -> ChangeDecoder:
    schema = FeedSchema("raw")
    schema.register("public.orders", list(info().columns))
    return ChangeDecoder({"public.orders": info()}, schema, skip)


REL = relation(1, "public", "orders", ORDERS)
OTHER = relation(2, "public", "audit", [("id", 23, -1, True)])


def ins(relid: int, *values: object) -> bytes:
    return b"I" + struct.pack(">I", relid) + b"N" + tuple_data(*values)


def upd(relid: int, new: tuple, old: tuple | None = None, kind: str = "K") -> bytes:
    head = b"U" + struct.pack(">I", relid)
    if old is not None:
        head += kind.encode() + tuple_data(*old)
    return head + b"N" + tuple_data(*new)


def test_records_in_transaction_order_with_ordinals_over_every_table() -> None:
    d = decoder()
    changes = feed(
        d, begin(0x500, xid=9), REL, OTHER, ins(1, "1", "2.00", "a"), ins(2, "5"),
        upd(1, ("1", "3.00", "b")),
        b"D" + struct.pack(">I", 1) + b"K" + tuple_data("1", None, None), commit(0x500, 0x540),
    )  # fmt: skip
    assert [(c.op, c.ordinal) for c in changes] == [("c", 0), ("u", 2), ("d", 3)]  # audit: 1
    assert {c.lsn for c in changes} == {0x500} and changes[0].xid == 9
    assert changes[2].values == {"id": "1"} and changes[2].before == {"id": "1"}
    assert seq_of(0x500, 2) < seq_of(0x500, 3) < seq_of(0x501, 0)
    assert d.commit is not None and d.commit.end_lsn == 0x540 and not d.in_transaction


def test_unchanged_toast_value_is_filled_when_known_and_listed_when_not() -> None:
    d = decoder()
    unknown = feed(
        d, begin(0x600), REL, upd(1, ("7", "1.00", pgoutput.UNCHANGED)), commit(0x600, 0x610)
    )
    assert unknown[0].values["body"] is None and unknown[0].unchanged == ["body"]
    # Known from this run's stream: the insert of the row.
    known = feed(
        d, begin(0x700), ins(1, "8", "1.00", "big"), upd(1, ("8", "2.00", pgoutput.UNCHANGED)),
        commit(0x700, 0x710),
    )  # fmt: skip
    assert known[1].values["body"] == "big" and known[1].unchanged is None


def test_replica_identity_full_fills_unchanged_values_from_the_old_row() -> None:
    d = decoder()
    old = ("9", "1.00", "whole body")
    (change,) = feed(
        d, begin(0x800), REL, upd(1, ("9", "5.00", pgoutput.UNCHANGED), old, "O"),
        commit(0x800, 0x810),
    )  # fmt: skip
    assert change.values["body"] == "whole body" and change.unchanged is None
    assert change.before == {"id": "9", "amount": "1.00", "body": "whole body"}


def test_a_key_change_is_a_delete_and_an_insert() -> None:
    d = decoder()
    changes = feed(
        d, begin(0x900), REL, upd(1, ("2", "1.00", "x"), ("1", None, None)), commit(0x900, 0x910)
    )
    assert [(c.op, c.values["id"], c.ordinal) for c in changes] == [("d", "1", 0), ("c", "2", 1)]


def test_truncate_is_one_record_per_captured_table() -> None:
    d = decoder()
    trunc = b"T" + struct.pack(">ib", 2, 0) + struct.pack(">II", 2, 1)
    changes = feed(d, begin(0xA00), REL, OTHER, trunc, commit(0xA00, 0xA10))
    assert [(c.op, c.table, c.ordinal) for c in changes] == [("t", "public.orders", 1)]


def test_a_split_transaction_resumes_after_its_committed_part() -> None:
    d = decoder(skip=(0xB00, 2))
    changes = feed(
        d, begin(0xB00), REL, *(ins(1, str(i), "1.00", "x") for i in range(4)),
        commit(0xB00, 0xB10), begin(0xC00), ins(1, "9", "1.00", "y"), commit(0xC00, 0xC10),
    )  # fmt: skip
    assert [(c.lsn, c.ordinal) for c in changes] == [(0xB00, 2), (0xB00, 3), (0xC00, 0)]


def test_arrow_feed_schema_and_dead_letters() -> None:
    d = decoder()
    changes = feed(
        d, begin(0xD00, ts_us=0, xid=3), REL, ins(1, "1", "NaN", "a"), ins(1, "2", "4.50", "b"),
        commit(0xD00, 0xD10),
    )  # fmt: skip
    data, rejected = to_arrow(changes, d.schema)
    assert data.column_names == [
        "op", "lsn", "ordinal", "seq", "commit_ts", "tx_id", "table",
        "id", "amount", "body", "before", "_unchanged_cols",
    ]  # fmt: skip
    assert data.num_rows == 1 and data.column("amount").to_pylist() == [Decimal("4.50")]
    assert data.column("seq").to_pylist() == [Decimal(seq_of(0xD00, 1))]
    assert data.column("commit_ts")[0].as_py() == PG_EPOCH
    assert rejected is not None and rejected.num_rows == 1
    letter = rejected.to_pylist()[0]
    assert "column 'amount'" in letter["error"] and letter["line"] == 0
    assert letter["source_file"] == "postgres_cdc:public.orders@0/D00"


def test_a_column_with_two_types_in_one_feed_is_refused() -> None:
    schema = FeedSchema("raw")
    schema.register("public.a", [("code", 23, -1)])
    schema.register("public.b", [("code", 20, -1)])  # int4 and int8: both int64
    with pytest.raises(SourceError, match=r"column 'code' is string in public\.c"):
        schema.register("public.c", [("code", 25, -1)])


# -- configuration -----------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    c = PostgresCdcConfig("postgresql+psycopg2://u@h/db", tables=["orders", "sales.items"])
    assert c.tables == ["public.orders", "sales.items"]
    assert c.dsn("raw") == "postgresql://u@h/db"
    assert c.slot_name("Raw-Orders") == "lakeforge_raw_orders"
    assert c.max_lag.warn == 1 << 30 and c.max_lag.stop is None
    lag = PostgresCdcConfig(url="x", tables="t", max_lag={"warn": "512MB", "stop": "10 GB"})
    assert (lag.max_lag.warn, lag.max_lag.stop) == (512 << 20, 10 << 30)
    assert parse_size(1024) == 1024 and parse_size("1.5kB") == 1536
    with pytest.raises(ValidationError, match="exactly one of url and url_env"):
        PostgresCdcConfig(tables=["t"])
    with pytest.raises(ValidationError, match="slot name"):
        PostgresCdcConfig(url="x", tables=["t"], slot="Bad-Name")
    with pytest.raises(ValidationError, match="listed twice"):
        PostgresCdcConfig(url="x", tables=["t", "public.t"])
    with pytest.raises(ValidationError, match="size"):
        PostgresCdcConfig(url="x", tables=["t"], max_lag={"warn": "lots"})


def test_url_env_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LF_NO_SUCH_DB", raising=False)
    c = PostgresCdcConfig(url_env="LF_NO_SUCH_DB", tables=["t"])
    with pytest.raises(SourceError, match="LF_NO_SUCH_DB"):
        c.dsn("raw")


def test_yaml_source_config_errors_point_at_the_model(tmp_path: Path) -> None:
    from lakeforge.errors import ConfigError
    from lakeforge.project.loader import load_project

    (tmp_path / "lakeforge.yml").write_text("name: p\n")
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "raw.sql"
    model.write_text(
        "/* lakeforge\nsource: {kind: postgres_cdc, url: 'postgresql://h/db', tables: [t],\n"
        "         max_change_per_batch: 10}\n*/\nSELECT * FROM source\n"
    )
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert "max_change_per_batch" in str(err.value) and "raw.sql" in str(err.value)
    model.write_text(
        "/* lakeforge\nsource: {kind: postgres_cdc, url: 'postgresql://h/db', tables: [t]}\n*/\n"
        "SELECT * FROM source\n"
    )
    ds = load_project(tmp_path).graph["raw"]
    assert isinstance(ds.config.source, PostgresCdcConfig)
    assert ds.config.write.strategy == "append"
