"""Row-level expectations: split a candidate batch into published, quarantined and dropped rows.

One DuckDB pass computes a violation flag per expectation (a rule is violated when its
expression is FALSE; NULL passes, as in a SQL CHECK constraint). The flags, aligned with
the candidate row by row (DuckDB preserves insertion order for a plain projection), then
drive Arrow filters, so the candidate is never copied through SQL. A row violating several
expectations takes the strongest action: fail > quarantine > drop > warn, so a row is never
dropped when a rule asked to keep it in quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp

from lakeforge.errors import ConfigError, SQLError
from lakeforge.quality.results import CheckResult, sample_rows

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from lakeforge.graph.spec import Dataset

FAILED_COLUMN = "_lf_failed_expectations"
CANDIDATE = "__lf_candidate"


@dataclass
class ExpectationSplit:
    """Where each candidate row went.

    ``rows_in == published.num_rows + quarantined.num_rows + dropped`` always holds.
    """

    rows_in: int
    published: pa.Table
    quarantined: pa.Table | None
    dropped: int
    results: list[CheckResult] = field(default_factory=list)

    @property
    def quarantined_rows(self) -> int:
        return 0 if self.quarantined is None else self.quarantined.num_rows


def parse_expression(ds: Dataset, name: str, expr: str) -> str:
    """Validate one expectation expression and render it for DuckDB."""
    try:
        tree = sqlglot.parse_one(expr, dialect="duckdb")
    except sqlglot.errors.ParseError as exc:
        detail = exc.errors[0].get("description") if exc.errors else str(exc)
        raise ConfigError(
            f"expectation {name!r} does not parse: {detail}",
            location=ds.location,
            dataset=ds.name,
            expected="a SQL boolean expression",
            found=expr,
        ) from None
    if isinstance(tree, exp.Query):
        raise ConfigError(
            f"expectation {name!r} must be a boolean expression over one row, not a query",
            location=ds.location,
            dataset=ds.name,
            expected="a SQL boolean expression",
            found=expr,
            hint="use a dataset check (custom_sql) for rules that need other rows",
        )
    return tree.sql("duckdb")


def apply_expectations(
    con: duckdb.DuckDBPyConnection,
    ds: Dataset,
    candidate: pa.Table,
    *,
    sample_size: int,
    pii_columns: set[str],
) -> ExpectationSplit:
    """Evaluate ``ds``'s expectations on ``candidate`` and split it by their actions."""
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    expectations = ds.config.expect
    if not expectations:
        return ExpectationSplit(candidate.num_rows, candidate, None, 0)
    names = list(expectations)
    actions = [expectations[n].action or ds.config.on_violation for n in names]
    flags_sql = ", ".join(
        f"coalesce(NOT ({parse_expression(ds, n, expectations[n].expr)}), false) AS f{i}"
        for i, n in enumerate(names)
    )
    con.register(CANDIDATE, candidate)
    try:
        flags = con.sql(f"SELECT {flags_sql} FROM {CANDIDATE}").to_arrow_table()
    except duckdb.Error as exc:
        raise _expression_error(con, ds, names, exc) from None
    if flags.num_rows != candidate.num_rows:  # pragma: no cover - DuckDB guarantees this
        raise AssertionError("expectation flags are not aligned with the candidate")

    violated = [flags.column(i).combine_chunks() for i in range(len(names))]
    counts = [int(pc.sum(v).as_py() or 0) for v in violated]
    empty = pa.array([False] * candidate.num_rows, pa.bool_())
    by_action: dict[str, pa.Array] = {}
    for action, flag in zip(actions, violated, strict=True):
        by_action[action] = pc.or_(by_action.get(action, empty), flag)
    quarantine = by_action.get("quarantine", empty)
    drop = pc.and_(by_action.get("drop", empty), pc.invert(quarantine))
    keep = pc.invert(pc.or_(quarantine, drop))

    results = []
    for i, (name, action) in enumerate(zip(names, actions, strict=True)):
        failing = counts[i]
        status = "pass" if failing == 0 else ("fail" if action == "fail" else "warn")
        sample = None
        if failing:
            rows = candidate.filter(violated[i]).slice(0, sample_size)
            sample = sample_rows(rows, pii_columns)
        results.append(
            CheckResult(
                name=name,
                check_type="expectation",
                origin="expectation",
                severity=action,
                status=status,
                value=float(failing),
                failing=failing,
                total=candidate.num_rows,
                threshold=expectations[name].expr,
                message=_message(name, action, failing, candidate.num_rows),
                sample=sample,
            )
        )

    quarantined = None
    if int(pc.sum(quarantine).as_py() or 0):
        quarantined = _quarantine_rows(con, candidate, flags, quarantine, names)
    dropped = int(pc.sum(drop).as_py() or 0)
    published = candidate.filter(keep)
    split = ExpectationSplit(candidate.num_rows, published, quarantined, dropped, results)
    if split.published.num_rows + split.quarantined_rows + split.dropped != split.rows_in:
        raise AssertionError("row accounting broken: published + quarantined + dropped != in")
    return split


def _quarantine_rows(
    con: duckdb.DuckDBPyConnection,
    candidate: pa.Table,
    flags: pa.Table,
    quarantine: pa.Array,
    names: list[str],
) -> pa.Table:
    """The quarantined rows with the names of every expectation each one failed."""
    rows = candidate.filter(quarantine)
    con.register("__lf_qflags", flags.filter(quarantine))
    listed = ", ".join(
        f"CASE WHEN f{i} THEN {exp.Literal.string(name).sql('duckdb')} END"
        for i, name in enumerate(names)
    )
    failed = con.sql(
        f"SELECT list_filter([{listed}], lambda x: x IS NOT NULL) AS failed FROM __lf_qflags"
    ).to_arrow_table()
    con.unregister("__lf_qflags")
    return rows.append_column(FAILED_COLUMN, failed.column(0))


def _message(name: str, action: str, failing: int, total: int) -> str:
    if not failing:
        return f"all {total} row(s) pass"
    verb = {
        "warn": "published with a warning",
        "drop": "dropped",
        "quarantine": "quarantined",
        "fail": "block the publish",
    }[action]
    return f"{failing} of {total} row(s) violate {name!r}: {verb}"


def _expression_error(
    con: duckdb.DuckDBPyConnection, ds: Dataset, names: list[str], exc: Exception
) -> SQLError:
    """Find which expectation DuckDB rejected and say so."""
    import duckdb

    for name in names:
        expr = parse_expression(ds, name, ds.config.expect[name].expr)
        try:
            con.sql(f"SELECT ({expr}) FROM {CANDIDATE} LIMIT 0").fetchall()
        except duckdb.Error as inner:
            columns = ", ".join(col for col in con.table(CANDIDATE).columns)
            return SQLError(
                f"expectation {name!r} cannot be evaluated: {str(inner).splitlines()[0]}",
                location=ds.location,
                dataset=ds.name,
                found=ds.config.expect[name].expr,
                hint=f"the output columns are: {columns}",
            )
    return SQLError(
        f"expectations cannot be evaluated: {str(exc).splitlines()[0]}",
        location=ds.location,
        dataset=ds.name,
    )
