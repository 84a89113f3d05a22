"""Dataset-level checks compiled into as few DuckDB passes as possible.

Every counting check of one scope (``not_null``, ``accepted_values``, ``range``, ``regex``,
``unique``, ``relationships``, ``row_count``, ``freshness``, ``anomaly``) becomes one output
column of a single SELECT over the checked relation: column rules as ``count(*) FILTER``
aggregates, uniqueness and foreign keys as scalar subqueries (a grouped count and a hash
anti-join), so DuckDB scans the candidate once for all column rules. Query checks
(``custom_sql``, ``sql_value``) run one statement each, with the dataset's own name bound
to the checked rows. Failing-row samples are fetched afterwards, only for checks that
failed, ``LIMIT``-ed — never all failures.

User values are bound parameters (``$p0`` …); identifiers are quoted by sqlglot; user SQL
fragments (``where``, ``custom_sql``) are parsed by sqlglot first so a typo is reported
against the check that holds it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from lakeforge.errors import ConfigError
from lakeforge.quality.anomaly import score_value
from lakeforge.quality.results import CheckResult, sample_rows
from lakeforge.quality.spec import (
    AcceptedValues,
    Anomaly,
    CustomSQL,
    Freshness,
    NotNull,
    Range,
    Regex,
    Relationships,
    RowCount,
    SchemaCheck,
    SqlValue,
    Unique,
    _Check,
    parse_duration,
)

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from lakeforge.graph.spec import Dataset

ROW_COLUMN = "__lf_row"  # position of a row in the candidate, for samples taken with Arrow
AGGREGATE_TYPES = (
    NotNull,
    AcceptedValues,
    Range,
    Regex,
    Unique,
    Relationships,
    RowCount,
    Freshness,
    Anomaly,
)


def ident(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql("duckdb")


@dataclass
class CheckTarget:
    """One check to evaluate and where it came from (``check`` or ``contract``)."""

    check: _Check
    origin: str = "check"


@dataclass
class CheckEnvironment:
    """What evaluation needs besides the checks.

    Attributes:
        con: DuckDB connection with the checked relations registered.
        ds: the dataset being checked.
        relations: scope (``batch`` / ``table``) → registered relation name.
        resolve: dataset name → registered relation name of its pinned table (other
            datasets a check reads); raises when it has no table.
        history: check name → earlier published values of its metric, newest first.
        now: the evaluation time (freshness).
        sample_size: failing rows kept per check.
        pii_columns: columns masked in samples.
        positions: relation → the Arrow table its ``__lf_row`` column indexes. On those
            relations the aggregate query also collects the positions of the first failing
            rows (``min(__lf_row, n)``), and samples are taken from Arrow: no second scan.
        plain: scope → the relation without ``__lf_row`` (what users' SQL and the schema
            check see).
    """

    con: duckdb.DuckDBPyConnection
    ds: Dataset
    relations: dict[str, str]
    resolve: Callable[[str], str]
    history: Callable[[str, int], list[float]]
    now: dt.datetime
    sample_size: int
    pii_columns: set[str] = field(default_factory=set)
    positions: dict[str, pa.Table] = field(default_factory=dict)
    plain: dict[str, str] = field(default_factory=dict)

    def visible(self, scope: str) -> str:
        return self.plain.get(scope, self.relations[scope])


@dataclass
class _Compiled:
    """SQL pieces of one aggregate check."""

    target: CheckTarget
    outputs: dict[str, str]  # output alias → SQL expression
    violation: str | None = None  # row predicate (for samples)
    sample_sql: str | None = None
    positioned: bool = False  # outputs carry failing-row positions
    flags: dict[str, str] = field(default_factory=dict)  # per-row booleans the outputs use


class _Params:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        key = f"p{len(self.values)}"
        self.values[key] = value
        return f"${key}"


def evaluate_checks(env: CheckEnvironment, targets: list[CheckTarget]) -> list[CheckResult]:
    """Evaluate ``targets`` and return one result each, in order."""
    results: dict[int, CheckResult] = {}
    by_scope: dict[str, list[tuple[int, CheckTarget]]] = {}
    for i, target in enumerate(targets):
        check = target.check
        if isinstance(check, AGGREGATE_TYPES):
            by_scope.setdefault(check.scope, []).append((i, target))
        elif isinstance(check, SchemaCheck):
            results[i] = _schema(env, target)
        else:
            results[i] = _query_check(env, target)
    for scope, items in by_scope.items():
        for i, result in _aggregate(env, env.relations[scope], items).items():
            results[i] = result
    return [results[i] for i in range(len(targets))]


# --- aggregate checks -------------------------------------------------------------------


def _where(env: CheckEnvironment, check: _Check) -> str:
    if not check.where:
        return "TRUE"
    return f"({_fragment(env.ds, check, check.where)})"


def _fragment(ds: Dataset, check: _Check, text: str) -> str:
    try:
        return sqlglot.parse_one(text, dialect="duckdb").sql("duckdb")
    except sqlglot.errors.ParseError as exc:
        detail = exc.errors[0].get("description") if exc.errors else str(exc)
        raise ConfigError(
            f"check {check.label!r}: SQL does not parse: {detail}",
            location=ds.location,
            dataset=ds.name,
            expected="a SQL expression" if text == check.where else "a SQL query",
            found=text,
        ) from None


def _compile(env: CheckEnvironment, rel: str, i: int, target: CheckTarget, p: _Params) -> _Compiled:
    check = target.check
    where = _where(env, check)
    total = f"count(*) FILTER (WHERE {where})" if check.where else "count(*)"
    positioned = rel in env.positions and env.sample_size > 0
    if isinstance(check, NotNull):
        bad = f"{ident(check.column)} IS NULL"
    elif isinstance(check, AcceptedValues):
        col = ident(check.column)
        bad = f"{col} IS NOT NULL AND NOT list_contains({p.bind(check.values)}, {col})"
    elif isinstance(check, Range):
        col = ident(check.column)
        lo, hi = ("<", ">") if check.inclusive else ("<=", ">=")
        terms = []
        if check.min is not None:
            terms.append(f"{col} {lo} {p.bind(check.min)}")
        if check.max is not None:
            terms.append(f"{col} {hi} {p.bind(check.max)}")
        bad = f"{col} IS NOT NULL AND ({' OR '.join(terms)})"
    elif isinstance(check, Regex):
        col = ident(check.column)
        bad = (
            f"{col} IS NOT NULL AND NOT regexp_full_match(CAST({col} AS VARCHAR), "
            f"{p.bind(check.pattern)})"
        )
    elif isinstance(check, Unique):
        keys = ", ".join(ident(k) for k in check.columns)
        nulls = [f"{ident(k)} IS NULL" for k in check.columns]
        # nulls_distinct: a key with a NULL is never a duplicate (SQL UNIQUE); otherwise
        # NULLs compare equal and only an all-NULL key is skipped (GROUP BY semantics).
        present = (
            " AND ".join(f"NOT {n}" for n in nulls)
            if check.nulls_distinct
            else f"NOT ({' AND '.join(nulls)})"
        )
        groups = f"FROM {rel} WHERE {where} AND {present} GROUP BY {keys} HAVING count(*) > 1"
        # The grouping counts rows per key and keeps the first duplicated keys (an outer
        # aggregate over the few duplicate groups only); their rows are fetched afterwards,
        # only when the check fails: cheaper than carrying row positions through every group.
        packed = ", ".join(f"'k{j}': {ident(k)}" for j, k in enumerate(check.columns))
        failing = (
            f"(SELECT {{'n': coalesce(sum(n), 0), 'keys': min({{{packed}}}, "
            f"{max(1, env.sample_size)})}} FROM (SELECT {keys}, count(*) AS n {groups}))"
        )
        return _Compiled(target, {f"t{i}": total, f"f{i}": failing})
    elif isinstance(check, Relationships):
        parent = env.resolve(check.to)
        col = ident(check.column)
        anti = (
            f"{rel} ANTI JOIN (SELECT {ident(check.field or check.column)} AS __lf_k "
            f"FROM {parent}) AS __p ON {rel}.{col} = __p.__lf_k "
            f"WHERE {where} AND {rel}.{col} IS NOT NULL"
        )
        if positioned:
            failing = (
                f"(SELECT {{'n': count(*), 'rows': min({rel}.{ROW_COLUMN}, "
                f"{env.sample_size})}} FROM {anti})"
            )
            return _Compiled(target, {f"t{i}": total, f"f{i}": failing}, positioned=True)
        return _Compiled(
            target,
            {f"t{i}": total, f"f{i}": f"(SELECT count(*) FROM {anti})"},
            sample_sql=f"SELECT {rel}.* FROM {anti} LIMIT {env.sample_size}",
        )
    elif isinstance(check, RowCount):
        return _Compiled(target, {f"t{i}": total})
    elif isinstance(check, Freshness):
        newest = f"max({ident(check.column)})" + (f" FILTER (WHERE {where})" if check.where else "")
        return _Compiled(target, {f"t{i}": total, f"v{i}": newest})
    elif isinstance(check, Anomaly):
        outputs = {f"t{i}": total}
        if check.metric != "volume":
            assert check.column is not None
            col = ident(check.column)
            metric = {
                "null_rate": f"count(*) FILTER (WHERE {where} AND {col} IS NULL)",
                "distinct_count": f"count(DISTINCT {col}) FILTER (WHERE {where})",
                "mean": f"avg({col}) FILTER (WHERE {where})",
            }[check.metric]
            outputs[f"v{i}"] = metric
        return _Compiled(target, outputs)
    else:  # pragma: no cover - AGGREGATE_TYPES is exhaustive
        raise AssertionError(type(check))
    # The rule is evaluated once per row, as a projected flag both aggregates filter on.
    outputs = {f"t{i}": total, f"f{i}": f"count(*) FILTER (WHERE b{i})"}
    if positioned:
        outputs[f"s{i}"] = f"min({ROW_COLUMN}, {env.sample_size}) FILTER (WHERE b{i})"
    violation = f"{where} AND ({bad})"
    return _Compiled(
        target, outputs, violation=violation, positioned=positioned, flags={f"b{i}": violation}
    )


def _aggregate(
    env: CheckEnvironment, rel: str, items: list[tuple[int, CheckTarget]]
) -> dict[int, CheckResult]:
    import duckdb

    params = _Params()
    compiled: dict[int, _Compiled] = {}
    results: dict[int, CheckResult] = {}
    for i, target in items:
        try:
            compiled[i] = _compile(env, rel, i, target, params)
        except ConfigError:
            raise
        except Exception as exc:  # a relationships target without a table, say
            results[i] = _error(target, exc)
    if not compiled:
        return results
    try:
        row = _run(env, rel, compiled.values(), params)
    except duckdb.Error:
        # One bad check must not hide the others: evaluate each alone to find it.
        row = {}
        for i, c in compiled.items():
            single = _Params()
            try:
                row.update(_run(env, rel, [_compile(env, rel, i, c.target, single)], single))
            except duckdb.Error as exc:
                results[i] = _error(c.target, exc)
    taken = _take_samples(env, rel, compiled, row)
    for i, c in compiled.items():
        if i not in results:
            results[i] = _judge(env, rel, i, c, row, params, taken)
    return results


def _duplicate_rows(env: CheckEnvironment, check: Unique, keys: list[dict[str, Any]]) -> pa.Table:
    """The rows holding the first duplicated keys (up to the sample size), ordered by key."""
    import pyarrow as pa

    names = [f"k{j}" for j in range(len(check.columns))]
    if not keys:
        return pa.table({})
    env.con.register("__lf_dupkeys", pa.Table.from_pylist(keys).select(names))
    try:
        match = " AND ".join(
            f"r.{ident(col)} IS NOT DISTINCT FROM d.{name}"
            for col, name in zip(check.columns, names, strict=True)
        )
        order = ", ".join(f"r.{ident(col)}" for col in check.columns)
        return env.con.sql(
            f"SELECT r.* FROM {env.visible(check.scope)} AS r SEMI JOIN __lf_dupkeys AS d "
            f"ON {match} WHERE {_where(env, check)} ORDER BY {order} LIMIT {env.sample_size}"
        ).to_arrow_table()
    finally:
        env.con.unregister("__lf_dupkeys")


def _positions(raw: Any) -> list[int]:
    """Failing-row positions an output carries: a list, or a {n, rows} struct."""
    if isinstance(raw, dict):
        return sorted(raw.get("rows") or [])
    return list(raw or [])


def _take_samples(
    env: CheckEnvironment, rel: str, compiled: dict[int, _Compiled], row: dict[str, Any]
) -> dict[int, pa.Table]:
    """Every positioned check's sample rows, with one Arrow ``take`` for all of them."""
    wanted: dict[int, list[int]] = {}
    for i, c in compiled.items():
        if c.positioned:
            raw = row.get(f"s{i}") if f"s{i}" in c.outputs else row.get(f"f{i}")
            positions = _positions(raw)[: env.sample_size]
            if positions:
                wanted[i] = positions
    if not wanted:
        return {}
    import pyarrow as pa

    every = sorted({p for positions in wanted.values() for p in positions})
    rows = env.positions[rel].take(pa.array(every, pa.int64()))
    where = {p: j for j, p in enumerate(every)}
    return {
        i: rows.take(pa.array([where[p] for p in positions], pa.int64()))
        for i, positions in wanted.items()
    }


def _run(env: CheckEnvironment, rel: str, compiled: Any, params: _Params) -> dict[str, Any]:
    compiled = list(compiled)
    outputs = [f"{sql} AS {alias}" for c in compiled for alias, sql in c.outputs.items()]
    flags = [f"{sql} AS {alias}" for c in compiled for alias, sql in c.flags.items()]
    source = f"(SELECT *, {', '.join(flags)} FROM {rel}) AS __lf_flagged" if flags else rel
    table = env.con.sql(
        f"SELECT {', '.join(outputs)} FROM {source}", params=params.values or None
    ).to_arrow_table()
    return {name: table.column(name)[0].as_py() for name in table.column_names}


def _judge(
    env: CheckEnvironment,
    rel: str,
    i: int,
    c: _Compiled,
    row: dict[str, Any],
    params: _Params,
    taken: dict[int, pa.Table],
) -> CheckResult:
    check = c.target.check
    total = int(row.get(f"t{i}") or 0)
    if isinstance(check, RowCount):
        outside = (check.min is not None and total < check.min) or (
            check.max is not None and total > check.max
        )
        low = "" if check.min is None else check.min
        high = "" if check.max is None else check.max
        bounds = f"[{low}, {high}]"
        status = _decide(check, int(outside), 1)
        return _result(
            c.target,
            status,
            value=float(total),
            total=total,
            threshold=f"rows in {bounds}",
            message=f"{total} row(s)" + (f", outside {bounds}" if outside else ""),
        )
    if isinstance(check, Freshness):
        return _freshness(env, c.target, row.get(f"v{i}"), total)
    if isinstance(check, Anomaly):
        return _anomaly(env, c.target, row, i, total)
    raw = row.get(f"f{i}")
    failing = int((raw["n"] if isinstance(raw, dict) else raw) or 0)
    status = _decide(check, failing, total)
    sample = None
    if failing and status != "pass" and env.sample_size:
        if isinstance(check, Unique):
            assert isinstance(raw, dict)
            rows = _duplicate_rows(env, check, raw["keys"] or [])
        elif c.positioned:
            rows = taken[i]
        else:
            sql = c.sample_sql or (
                f"SELECT * FROM {rel} WHERE {c.violation} LIMIT {env.sample_size}"
            )
            used = {k: v for k, v in params.values.items() if re.search(rf"\${k}\b", sql)}
            rows = env.con.sql(sql, params=used or None).to_arrow_table()
        sample = sample_rows(rows, env.pii_columns)
    pct = f" ({100 * failing / total:.2f}%)" if total else ""
    return _result(
        c.target,
        status,
        value=float(failing),
        failing=failing,
        total=total,
        threshold=_threshold_text(check),
        message=f"{failing} of {total} row(s) fail{pct}" if failing else f"{total} row(s) pass",
        sample=sample,
    )


def _freshness(env: CheckEnvironment, target: CheckTarget, newest: Any, total: int) -> CheckResult:
    check = target.check
    assert isinstance(check, Freshness)
    limits = f"warn after {check.warn_after}, error after {check.error_after}"
    if newest is None:
        return _result(
            target,
            "fail" if check.error_after is not None and check.severity == "error" else "warn",
            total=total,
            threshold=limits,
            message=f"no {check.column} value to measure freshness by ({total} row(s))",
        )
    if isinstance(newest, dt.datetime):
        stamp = newest if newest.tzinfo else newest.replace(tzinfo=dt.UTC)
    elif isinstance(newest, dt.date):
        stamp = dt.datetime(newest.year, newest.month, newest.day, tzinfo=dt.UTC)
    else:
        return _error(target, TypeError(f"{check.column} is not a date or timestamp column"))
    age = (env.now - stamp).total_seconds()
    status = "pass"
    if check.error_after is not None and age > parse_duration(check.error_after):
        status = "fail" if check.severity == "error" else "warn"
    elif check.warn_after is not None and age > parse_duration(check.warn_after):
        status = "warn"
    return _result(
        target,
        status,
        value=age,
        total=total,
        threshold=limits,
        message=f"newest {check.column} is {_age(age)} old ({stamp.isoformat()})",
    )


def _anomaly(
    env: CheckEnvironment, target: CheckTarget, row: dict[str, Any], i: int, total: int
) -> CheckResult:
    check = target.check
    assert isinstance(check, Anomaly)
    if check.metric == "volume":
        value: float | None = float(total)
    elif check.metric == "null_rate":
        value = (int(row.get(f"v{i}") or 0) / total) if total else 0.0
    else:
        raw = row.get(f"v{i}")
        value = None if raw is None else float(raw)
    if value is None:
        return _result(target, "pass", total=total, message="no values to measure (all NULL)")
    history = env.history(check.label, check.window)
    if len(history) < check.min_history:
        return _result(
            target,
            "pass",
            value=value,
            total=total,
            threshold=f"needs {check.min_history} earlier runs",
            message=f"learning: {len(history)} of {check.min_history} earlier value(s) so far",
        )
    verdict = score_value(
        value,
        history,
        method=check.method,
        sensitivity=check.sensitivity,
        max_change=check.max_change,
    )
    status = "pass"
    if verdict.anomalous:
        status = "fail" if check.severity == "error" else "warn"
    return _result(
        target,
        status,
        value=value,
        total=total,
        threshold=(
            f"|z| ≤ {check.sensitivity:g}"
            if check.method == "zscore"
            else f"change ≤ {100 * check.max_change:g}%"
        ),
        message=f"{check.metric} {value:g}: {verdict.explanation}",
        extra={"score": verdict.score, "baseline": verdict.baseline, "history": len(history)},
    )


# --- schema and query checks ------------------------------------------------------------


def _schema(env: CheckEnvironment, target: CheckTarget) -> CheckResult:
    check = target.check
    assert isinstance(check, SchemaCheck)
    relation = env.con.table(env.visible(check.scope))
    types = zip(relation.columns, relation.types, strict=True)
    actual = {name: str(dtype).upper() for name, dtype in types}
    problems = []
    for column, expected in check.columns.items():
        if column not in actual:
            problems.append(f"missing column {column}")
        elif expected is not None and _normal_type(expected) != _normal_type(actual[column]):
            problems.append(f"{column} is {actual[column]}, expected {expected.upper()}")
    if not check.allow_extra:
        problems += [f"unexpected column {c}" for c in actual if c not in check.columns]
    status = _decide(check, len(problems), len(check.columns))
    return _result(
        target,
        status,
        value=float(len(problems)),
        failing=len(problems),
        total=len(check.columns),
        threshold=_threshold_text(check),
        message="; ".join(problems) if problems else f"{len(check.columns)} column(s) as expected",
    )


_TYPE_ALIASES = {
    "INT": "INTEGER",
    "INT4": "INTEGER",
    "INT8": "BIGINT",
    "LONG": "BIGINT",
    "INT2": "SMALLINT",
    "SHORT": "SMALLINT",
    "FLOAT8": "DOUBLE",
    "FLOAT4": "FLOAT",
    "REAL": "FLOAT",
    "STRING": "VARCHAR",
    "TEXT": "VARCHAR",
    "BOOL": "BOOLEAN",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
    "DATETIME": "TIMESTAMP",
}


def _normal_type(name: str) -> str:
    text = " ".join(name.upper().split())
    return _TYPE_ALIASES.get(text, text)


def _query_check(env: CheckEnvironment, target: CheckTarget) -> CheckResult:
    import duckdb

    check = target.check
    assert isinstance(check, CustomSQL | SqlValue)
    sql = _fragment(env.ds, check, check.sql)
    # The dataset's own name means the checked rows (the candidate, or the table as it will
    # be); other dataset names resolve to their pinned tables.
    view = ident(env.ds.name)
    try:
        for table in _referenced(sql):
            if table != env.ds.name:
                source = env.resolve(table)
                env.con.sql(f"CREATE OR REPLACE TEMP VIEW {ident(table)} AS FROM {source}")
        env.con.sql(f"CREATE OR REPLACE TEMP VIEW {view} AS FROM {env.visible(check.scope)}")
        if isinstance(check, SqlValue):
            values = env.con.sql(sql).fetchall()
            if len(values) != 1 or len(values[0]) != 1:
                raise ValueError("a sql_value query must return exactly one value")
            raw = values[0][0]
            value = float(raw) if raw is not None else None
            warn, error = check.thresholds()
            status = "pass"
            if value is not None and error is not None and error.matches(value, 1):
                status = "fail"
            elif value is not None and warn is not None and warn.matches(value, 1):
                status = "warn"
            return _result(
                target,
                status,
                value=value,
                threshold=_threshold_text(check),
                message=f"query returned {raw}",
            )
        failing = int(env.con.sql(f"SELECT count(*) FROM ({sql})").fetchall()[0][0])
        status = _decide(check, failing, failing)
        sample = None
        if failing and status != "pass":
            rows = env.con.sql(f"SELECT * FROM ({sql}) LIMIT {env.sample_size}").to_arrow_table()
            sample = sample_rows(rows, env.pii_columns)
        return _result(
            target,
            status,
            value=float(failing),
            failing=failing,
            threshold=_threshold_text(check),
            message=f"{failing} offending row(s)" if failing else "no offending rows",
            sample=sample,
        )
    except (duckdb.Error, ValueError, LookupError) as exc:
        return _error(target, exc)
    finally:
        env.con.sql(f"DROP VIEW IF EXISTS {view}")


def _referenced(sql: str) -> set[str]:
    tree = sqlglot.parse_one(sql, dialect="duckdb")
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    return {t.name for t in tree.find_all(exp.Table) if t.name and t.name not in ctes}


# --- verdicts ---------------------------------------------------------------------------


def _decide(check: _Check, failing: float, total: int) -> str:
    warn, error = check.thresholds()
    if error is not None and error.matches(failing, total):
        return "fail"
    if warn is not None and warn.matches(failing, total):
        return "warn"
    return "pass"


def _threshold_text(check: _Check) -> str:
    warn, error = check.thresholds()
    parts = []
    if error is not None:
        parts.append(f"error if {error}")
    if warn is not None:
        parts.append(f"warn if {warn}")
    return ", ".join(parts)


def _result(target: CheckTarget, status: str, **values: Any) -> CheckResult:
    check = target.check
    return CheckResult(
        name=check.label,
        check_type=check.type,  # type: ignore[attr-defined]
        origin=target.origin,
        severity=check.severity,
        status=status,
        scope=check.scope,
        **values,
    )


def _error(target: CheckTarget, exc: BaseException) -> CheckResult:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _result(target, "error", message=f"could not evaluate: {text}")


def _age(seconds: float) -> str:
    if seconds < 0:
        return f"{_age(-seconds)} in the future, i.e. 0 s"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
