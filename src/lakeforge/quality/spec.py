"""What users declare about data quality: row expectations and dataset checks.

Expectations are named SQL boolean expressions evaluated per row, each with an action.
Checks are dataset-level assertions (a discriminated union on ``type``) with a severity and
optional thresholds. Both are pydantic models shared by the decorators, SQL model headers
and data contracts, so a mistake is reported with the file and line it came from.
"""

from __future__ import annotations

import functools
import re
from abc import abstractmethod
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Action = Literal["warn", "drop", "quarantine", "fail"]
Severity = Literal["error", "warn"]
Scope = Literal["batch", "table"]

_THRESHOLD = re.compile(r"^\s*(>=|<=|>|<|==|=|!=)?\s*(\d+(?:\.\d+)?)\s*(%)?\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expectation(_Strict):
    """A named row-level rule.

    A row violates the expectation when ``expr`` is FALSE; NULL passes, as in a SQL CHECK
    constraint (write ``x IS NOT NULL AND ...`` to reject nulls).

    Args:
        expr: SQL boolean expression over the dataset's output columns.
        action: ``warn`` publishes and counts, ``drop`` excludes and counts, ``quarantine``
            excludes and writes the row to ``<dataset>__quarantine``, ``fail`` publishes
            nothing. Default: the dataset's ``on_violation``.
    """

    expr: str = Field(min_length=1)
    action: Action | None = None


class Threshold(_Strict):
    """``> 0``, ``>= 5%``, ``10`` (meaning ``> 10``): compared with a failing-row count."""

    op: Literal[">", ">=", "<", "<=", "==", "!="]
    value: float
    percent: bool = False

    @classmethod
    def parse(cls, text: str | float) -> Threshold:
        if isinstance(text, int | float) and not isinstance(text, bool):
            return cls(op=">", value=float(text))
        match = _THRESHOLD.match(str(text))
        if not match:
            raise ValueError(
                f"threshold {text!r} is not understood; write e.g. '> 0', '>= 5%' or 10"
            )
        op, value, percent = match.groups()
        op = {"=": "=="}.get(op or ">", op or ">")
        return cls.model_validate({"op": op, "value": float(value), "percent": bool(percent)})

    def matches(self, failing: float, total: int) -> bool:
        measured = (100.0 * failing / total if total else 0.0) if self.percent else failing
        return {
            ">": measured > self.value,
            ">=": measured >= self.value,
            "<": measured < self.value,
            "<=": measured <= self.value,
            "==": measured == self.value,
            "!=": measured != self.value,
        }[self.op]

    def __str__(self) -> str:
        number = f"{self.value:g}"
        return f"{self.op} {number}{'%' if self.percent else ''}"


@functools.lru_cache(maxsize=256)
def _re2_problem(pattern: str) -> str | None:
    """Why RE2 — the syntax the checks run with (no look-around, no back-references) —
    rejects ``pattern``, or None; so a pattern Python accepts fails at load time, not later."""
    import duckdb

    try:
        duckdb.connect().execute("SELECT regexp_full_match('', ?)", [pattern]).fetchall()
    except duckdb.Error as exc:
        return str(exc).splitlines()[0]
    return None


def parse_duration(text: str | float) -> float:
    """Seconds in ``30s``, ``15m``, ``2h``, ``7d``, ``1w`` (a bare number is seconds)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"duration {text!r} is not understood; write e.g. 30s, 15m, 2h, 7d")
    return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]


class _Check(_Strict):
    """Fields shared by every check.

    Args:
        name: unique within the dataset; generated from the type and columns when omitted.
        severity: ``error`` blocks the publish, ``warn`` only reports.
        warn_if / error_if: thresholds on the failing-row count (``'> 0'``, ``'> 5%'``);
            when given they decide the status instead of ``severity``.
        scope: ``batch`` checks the candidate rows; ``table`` checks the table as it will be
            after the write.
        where: optional SQL filter: only matching rows are checked.
    """

    name: str | None = None
    severity: Severity = "error"
    warn_if: str | float | None = None
    error_if: str | float | None = None
    scope: Scope = "batch"
    where: str | None = None

    @field_validator("warn_if", "error_if")
    @classmethod
    def _valid_threshold(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            Threshold.parse(value)
        return value

    def thresholds(self) -> tuple[Threshold | None, Threshold | None]:
        """(warn, error) thresholds with the severity's default applied."""
        warn = None if self.warn_if is None else Threshold.parse(self.warn_if)
        error = None if self.error_if is None else Threshold.parse(self.error_if)
        if warn is None and error is None:
            default = Threshold(op=">", value=0)
            return (default, None) if self.severity == "warn" else (None, default)
        return warn, error

    @abstractmethod
    def default_name(self) -> str:
        """The name a check gets when it declares none."""

    @property
    def label(self) -> str:
        return self.name or self.default_name()


class NotNull(_Check):
    """No NULL in ``column``."""

    type: Literal["not_null"] = "not_null"
    column: str

    def default_name(self) -> str:
        return f"not_null({self.column})"


class Unique(_Check):
    """No two rows share a value of ``columns`` (one column, or a compound key).

    Failing rows are the rows whose key occurs more than once. With ``nulls_distinct``
    (default), a key holding a NULL is never a duplicate, as in a SQL UNIQUE constraint;
    with ``nulls_distinct: false`` NULLs compare equal (PostgreSQL's ``NULLS NOT
    DISTINCT``, ``GROUP BY`` semantics) and only keys that are entirely NULL are skipped.
    """

    type: Literal["unique"] = "unique"
    columns: list[str] = Field(min_length=1)
    nulls_distinct: bool = True

    @field_validator("columns", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def default_name(self) -> str:
        return f"unique({', '.join(self.columns)})"


class AcceptedValues(_Check):
    """Every non-NULL value of ``column`` is one of ``values``."""

    type: Literal["accepted_values"] = "accepted_values"
    column: str
    values: list[Any] = Field(min_length=1)

    def default_name(self) -> str:
        return f"accepted_values({self.column})"


class Range(_Check):
    """Every non-NULL value of ``column`` lies in [min, max] (bounds optional, inclusive)."""

    type: Literal["range"] = "range"
    column: str
    min: Any = None
    max: Any = None
    inclusive: bool = True

    @model_validator(mode="after")
    def _has_bound(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range check needs min, max or both")
        return self

    def default_name(self) -> str:
        return f"range({self.column})"


class Regex(_Check):
    """Every non-NULL value of ``column`` matches ``pattern`` entirely."""

    type: Literal["regex"] = "regex"
    column: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        problem = _re2_problem(value)
        if problem:
            raise ValueError(f"pattern {value!r} is not a valid RE2 regular expression: {problem}")
        return value

    def default_name(self) -> str:
        return f"regex({self.column})"


class Relationships(_Check):
    """Every non-NULL ``column`` value exists in ``to``'s ``field`` (a foreign key)."""

    type: Literal["relationships"] = "relationships"
    column: str
    to: str
    field: str | None = None

    def default_name(self) -> str:
        return f"relationships({self.column} → {self.to}.{self.field or self.column})"


class RowCount(_Check):
    """The number of rows lies in [min, max]."""

    type: Literal["row_count"] = "row_count"
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _has_bound(self) -> RowCount:
        if self.min is None and self.max is None:
            raise ValueError("a row_count check needs min, max or both")
        return self

    def default_name(self) -> str:
        return "row_count"


class Freshness(_Check):
    """The newest ``column`` value is at most ``warn_after`` / ``error_after`` old."""

    type: Literal["freshness"] = "freshness"
    column: str
    warn_after: str | float | None = None
    error_after: str | float | None = None

    @field_validator("warn_after", "error_after")
    @classmethod
    def _valid_duration(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _has_limit(self) -> Freshness:
        if self.warn_after is None and self.error_after is None:
            raise ValueError("a freshness check needs warn_after, error_after or both")
        return self

    def default_name(self) -> str:
        return f"freshness({self.column})"


class SchemaCheck(_Check):
    """The output has these columns (and, where given, these types).

    Args:
        columns: column name → expected type (DuckDB type name), or None for any type.
        allow_extra: other columns are allowed (default) or a failure.
    """

    type: Literal["schema"] = "schema"
    columns: dict[str, str | None] = Field(min_length=1)
    allow_extra: bool = True

    @model_validator(mode="after")
    def _no_where(self) -> SchemaCheck:
        if self.where:
            raise ValueError("`where` does not apply to a schema check")
        return self

    @field_validator("columns", mode="before")
    @classmethod
    def _list_form(cls, value: Any) -> Any:
        return dict.fromkeys(value) if isinstance(value, list) else value

    def default_name(self) -> str:
        return "schema"


class CustomSQL(_Check):
    """A query returning the offending rows; the dataset's own name is the checked data."""

    type: Literal["custom_sql"] = "custom_sql"
    sql: str = Field(min_length=1)

    @model_validator(mode="after")
    def _absolute(self) -> CustomSQL:
        if self.where:
            raise ValueError("`where` does not apply to custom_sql: filter in the query")
        for threshold in (self.warn_if, self.error_if):
            if threshold is not None and Threshold.parse(threshold).percent:
                raise ValueError(
                    "a custom_sql threshold is a row count: the query returns only the "
                    "offending rows, so there is no total to take a percentage of"
                )
        return self

    def default_name(self) -> str:
        return "custom_sql"


class SqlValue(_Check):
    """A query returning one number, compared with ``error_if`` / ``warn_if`` (default
    ``> 0``): e.g. ``SELECT count(*) FROM orders WHERE shipped_at < ordered_at``."""

    type: Literal["sql_value"] = "sql_value"
    sql: str = Field(min_length=1)

    @model_validator(mode="after")
    def _absolute(self) -> SqlValue:
        if self.where:
            raise ValueError("`where` does not apply to sql_value: filter in the query")
        for threshold in (self.warn_if, self.error_if):
            if threshold is not None and Threshold.parse(threshold).percent:
                raise ValueError("a sql_value threshold is a number, not a percentage")
        return self

    def default_name(self) -> str:
        return "sql_value"


AnomalyMetric = Literal["volume", "null_rate", "distinct_count", "mean"]


class Anomaly(_Check):
    """A metric compared with its values in the trailing ``window`` published runs.

    Args:
        metric: ``volume`` (rows), ``null_rate``, ``distinct_count`` or ``mean`` of ``column``.
        method: ``zscore`` — robust z-score (median / MAD) above ``sensitivity`` fails;
            ``relative`` — relative change from the trailing median above ``max_change`` fails.
        min_history: fewer earlier values than this: the check passes and says it is learning.
    """

    type: Literal["anomaly"] = "anomaly"
    # A spike is a reason to look, not proof of bad data: report by default, block on request.
    severity: Severity = "warn"
    metric: AnomalyMetric
    column: str | None = None
    method: Literal["zscore", "relative"] = "zscore"
    window: int = Field(default=20, ge=2, le=1000)
    min_history: int = Field(default=5, ge=2)
    sensitivity: float = Field(default=3.5, gt=0)
    max_change: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _column_needed(self) -> Anomaly:
        if self.metric != "volume" and not self.column:
            raise ValueError(f"anomaly metric {self.metric!r} needs a column")
        if self.min_history > self.window:
            raise ValueError("min_history cannot exceed window")
        return self

    def default_name(self) -> str:
        target = f"({self.column})" if self.column else ""
        return f"anomaly_{self.metric}{target}"


Check = Annotated[
    NotNull
    | Unique
    | AcceptedValues
    | Range
    | Regex
    | Relationships
    | RowCount
    | Freshness
    | SchemaCheck
    | CustomSQL
    | SqlValue
    | Anomaly,
    Field(discriminator="type"),
]
CHECK_TYPES: dict[str, type[_Check]] = {
    m.model_fields["type"].default: m
    for m in (
        NotNull,
        Unique,
        AcceptedValues,
        Range,
        Regex,
        Relationships,
        RowCount,
        Freshness,
        SchemaCheck,
        CustomSQL,
        SqlValue,
        Anomaly,
    )
}
# Shorthand `- not_null: email` / `- unique: [a, b]`: the field a bare value fills.
_SHORTHAND_FIELD = {
    "not_null": "column",
    "unique": "columns",
    "custom_sql": "sql",
    "schema": "columns",
}


def expand_check_shorthand(value: Any) -> list[Any]:
    """``{not_null: [a, b]}`` → two checks; ``{unique: [a, b]}`` → one compound check.

    Other keys next to the short form are kept (``{unique: id, severity: warn}``).
    """
    if not isinstance(value, dict) or "type" in value:
        return [value]
    kinds = [k for k in value if k in _SHORTHAND_FIELD]
    if len(kinds) != 1:
        raise ValueError(
            "a check needs `type:` (one of " + ", ".join(CHECK_TYPES) + ") or a short form "
            "such as `- not_null: column` / `- unique: [col_a, col_b]`"
        )
    kind = kinds[0]
    rest = {k: v for k, v in value.items() if k != kind}
    arg = value[kind]
    if kind == "not_null" and isinstance(arg, list):
        return [{"type": kind, "column": col, **rest} for col in arg]
    return [{"type": kind, _SHORTHAND_FIELD[kind]: arg, **rest}]


def expectations_from(value: Any) -> Any:
    """``{name: "expr"}`` → ``{name: {expr: "expr"}}`` (the short form)."""
    if isinstance(value, dict):
        return {k: {"expr": v} if isinstance(v, str) else v for k, v in value.items()}
    return value
