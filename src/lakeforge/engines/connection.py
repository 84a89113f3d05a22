"""Every DuckDB connection Lakeforge opens, set up the same way.

DuckDB reads and shows ``TIMESTAMPTZ`` values in the session's time zone, which defaults to
the machine's. Lakeforge's tables store UTC (Delta's ``timestamp[us, tz=UTC]``), partition
boundaries and watermarks are UTC, so every connection runs in UTC: a laptop in Berlin and
a server in UTC build the same rows, and a zoned column keeps its type from one write to
the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb


def connect(*, threads: int | None = None, **config: Any) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC (``threads``: at most that many)."""
    import duckdb

    if threads:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    con.execute("SET TimeZone = 'UTC'")
    return con
