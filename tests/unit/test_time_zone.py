"""Builds do not depend on the machine's time zone: every DuckDB connection runs in UTC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from lakeforge.storage.delta import DeltaStore


def test_a_zoned_timestamp_column_is_utc_and_keeps_its_type_on_a_non_utc_machine(
    tmp_path: Path,
) -> None:
    (tmp_path / "landing").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "lakeforge.yml").write_text("name: tz\n")
    (tmp_path / "models" / "events.sql").write_text(
        textwrap.dedent(
            """
            /* lakeforge
            source: {path: "landing/*.ndjson", file_column: null}
            */
            SELECT id, CAST(ts AS TIMESTAMPTZ) AS ts, CAST(ts AS TIMESTAMPTZ)::DATE AS day
            FROM source
            """
        ).lstrip()
    )
    env = {**os.environ, "TZ": "America/New_York"}  # 5 hours behind UTC in January

    def land_and_run(name: str, at: str) -> None:
        (tmp_path / "landing" / name).write_text(json.dumps({"id": name, "ts": at}) + "\n")
        done = subprocess.run(
            [sys.executable, "-m", "lakeforge", "-C", str(tmp_path), "run"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    land_and_run("a.ndjson", "2024-01-02T01:30:00Z")
    land_and_run("b.ndjson", "2024-01-03T02:00:00+00:00")  # a second write of the column
    table = DeltaStore(str(tmp_path / "lakehouse")).read("events").to_table()
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["ts"].isoformat() for r in rows] == [
        "2024-01-02T01:30:00+00:00",
        "2024-01-03T02:00:00+00:00",
    ]
    # The date of the UTC instant, not of New York's (which is the day before at 01:30 UTC).
    assert [r["day"].isoformat() for r in rows] == ["2024-01-02", "2024-01-03"]
