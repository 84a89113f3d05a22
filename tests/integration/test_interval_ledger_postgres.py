"""The interval ledger on a real PostgreSQL server: rows read as the driver returns them
(JSONB already decoded, timestamps with a zone) give the same records as on SQLite."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from lakeforge.metadata.intervals import IntervalLedger, IntervalRecord
from lakeforge.metadata.store import MetadataStore

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def fill(book: IntervalLedger) -> None:
    # A zoned time is stored and read back as the same instant, in UTC.
    at = T0.astimezone(timezone(timedelta(hours=2)))
    book.finish("ds", "2024-01-01", status="built", at=at, fingerprint="f1",
                input_versions={"up": 3, "other": 12}, rows=10, version=4, run_id="r1")  # fmt: skip
    book.start("ds", "2024-01-02", run_id="r2", fingerprint="f1", at=T0)
    book.finish("ds", "2024-01-02", status="failed", at=T0 + timedelta(minutes=1), error="boom")
    for i in range(520):  # more names than one IN (...) batch holds
        book.finish(f"d{i:03d}", "EU", status="built", at=T0, rows=i)
    book.finish("it's", "EU", status="built", at=T0, rows=1)


def records(url: str) -> tuple[dict[str, dict[str, IntervalRecord]], ...]:
    with MetadataStore(url) as metadata:
        book = IntervalLedger(metadata)
        fill(book)
        names = ["ds", "it's", *(f"d{i:03d}" for i in range(520))]
        return book.read(), book.read(names), book.read(["ds"])


def test_ledger_reads_the_same_on_postgres_and_sqlite(
    postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    pg_all, pg_named, pg_ds = records(postgres_database())
    lite_all, lite_named, lite_ds = records(f"sqlite:///{tmp_path / 'm.db'}")
    assert pg_all == lite_all and pg_named == lite_named and pg_ds == lite_ds
    assert len(pg_all) == 522 and pg_named == pg_all
    built = pg_ds["ds"]["2024-01-01"]
    assert built.input_versions == {"up": 3, "other": 12}
    assert built.updated_at == T0 and built.built_at == T0 and built.updated_at.tzinfo == UTC
    failed = pg_ds["ds"]["2024-01-02"]
    assert (failed.status, failed.error, failed.input_versions, failed.built_at) == (
        "failed", "boom", {}, None,
    )  # fmt: skip
    assert pg_all["it's"]["EU"].rows == 1
