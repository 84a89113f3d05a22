"""Partitions: a dataset built, tracked and replaced one slice at a time.

``partitions=lf.Daily(start="2024-01-01", column="order_date")`` splits a dataset into
daily intervals ``[start, end)`` of ``order_date`` (also :class:`Hourly`, :class:`Monthly`,
and :class:`Static` lists of values). Each partition is built by its own task, written as
one Delta commit that replaces exactly the rows of that interval, and recorded in the
interval ledger (``execution/intervals.py``) with the code and inputs it was built from.

A SQL model selects its slice with the macros ``@start`` and ``@end`` (typed literals: a
``DATE`` for daily and monthly, a ``TIMESTAMP`` for hourly) or ``@partition`` (the value of
a static partition); a Python transform reads ``context.partition``. Only complete
intervals exist: today's daily partition appears once today is over.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_MACROS = ("start", "end", "partition")
_KINDS = ("daily", "hourly", "monthly", "static")


@dataclass(frozen=True, order=True)
class Partition:
    """One partition: its key (``2024-01-31``, ``2024-01-31T05``, ``2024-01``, ``EU``) and
    the interval ``[start, end)`` it covers (time partitions) or its ``value`` (static)."""

    key: str
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    value: Any = None

    def macros(self, time_type: str) -> dict[str, str]:
        """SQL literals for ``@start``, ``@end`` and ``@partition``."""
        from sqlglot import exp

        if self.start is None or self.end is None:
            literal = exp.convert(self.value).sql("duckdb")
            return {"partition": literal}

        def typed(value: dt.datetime) -> str:
            text = value.date().isoformat() if time_type == "DATE" else value.isoformat(" ")
            return f"{time_type} '{text}'"

        return {"start": typed(self.start), "end": typed(self.end), "partition": f"'{self.key}'"}


class _TimePartitions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    start: dt.datetime
    end: dt.datetime | None = None
    lookback: int = Field(default=0, ge=0)

    step_name: ClassVar[str]
    time_type: ClassVar[str] = "DATE"
    key_format: ClassVar[str] = "%Y-%m-%d"

    @field_validator("start", "end", mode="before")
    @classmethod
    def _dates(cls, value: Any) -> Any:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return dt.datetime(value.year, value.month, value.day)
        return value

    @field_validator("start", "end")
    @classmethod
    def _naive_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        # Partition boundaries are UTC wall-clock times, stored without a zone.
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    @model_validator(mode="after")
    def _aligned(self) -> _TimePartitions:
        if self.floor(self.start) != self.start:
            floor = self.floor(self.start)
            shown = floor.date().isoformat() if floor.time() == dt.time() else floor.isoformat()
            raise ValueError(
                f"start {self.start.isoformat()} is not on a {self.step_name} boundary "
                f"(did you mean {shown}?)"
            )
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        if self.end is not None and self.floor(self.end) != self.end:
            raise ValueError(f"end {self.end.isoformat()} is not on a {self.step_name} boundary")
        return self

    # -- calendar ------------------------------------------------------------------------

    def floor(self, at: dt.datetime) -> dt.datetime:
        raise NotImplementedError

    def after(self, at: dt.datetime) -> dt.datetime:
        """The boundary following ``at`` (which is on a boundary)."""
        raise NotImplementedError

    def partition_at(self, at: dt.datetime) -> Partition:
        start = self.floor(at)
        return Partition(self.key(start), start, self.after(start))

    def partitions(
        self, now: dt.datetime, *, start: Any = None, end: Any = None
    ) -> list[Partition]:
        """The complete partitions up to ``now``, oldest first, optionally within
        ``[start, end)`` (dates or datetimes; an unaligned bound takes the partition it is in)."""
        limit = self.floor(_naive(now))
        if self.end is not None:
            limit = min(limit, self.end)
        first = self.start
        if start is not None:
            first = max(first, self.floor(_as_datetime(start)))
        if end is not None:  # inclusive: the partition holding ``end`` is the last
            limit = min(limit, self.after(self.floor(_as_datetime(end))))
        return list(_walk(self, first, limit))

    def key(self, at: dt.datetime) -> str:
        """The key of the partition starting at ``at``."""
        return at.strftime(self.key_format)

    def parse_key(self, key: str) -> Partition:
        """The partition named ``key`` (as shown by ``lakeforge status``)."""
        try:
            start = dt.datetime.strptime(key, self.key_format)
        except ValueError:
            raise ValueError(
                f"{key!r} is not a {self.step_name} partition key (expected e.g. "
                f"{self.start.strftime(self.key_format)})"
            ) from None
        return self.partition_at(start)

    def describe(self) -> str:
        return f"{self.step_name} on {self.column} from {self.start.strftime(self.key_format)}"


class Daily(_TimePartitions):
    """One partition per UTC day: ``Daily(start="2024-01-01", column="order_date")``.

    Args:
        column: the date/timestamp column a partition's rows are selected by.
        start: the first day. end: the day after the last (default: open, up to today).
        lookback: also rebuild this many partitions before the newest on every run (late
            data, or inputs that changed).
    """

    kind: Literal["daily"] = "daily"
    step_name: ClassVar[str] = "daily"

    def floor(self, at: dt.datetime) -> dt.datetime:
        return dt.datetime(at.year, at.month, at.day)

    def after(self, at: dt.datetime) -> dt.datetime:
        return at + dt.timedelta(days=1)

    def key(self, at: dt.datetime) -> str:
        return at.date().isoformat()  # as key_format, without strftime's cost


class Hourly(_TimePartitions):
    """One partition per UTC hour (keys ``2024-01-31T05``); ``@start``/``@end`` are
    timestamps."""

    kind: Literal["hourly"] = "hourly"
    step_name: ClassVar[str] = "hourly"
    time_type: ClassVar[str] = "TIMESTAMP"
    key_format: ClassVar[str] = "%Y-%m-%dT%H"

    def floor(self, at: dt.datetime) -> dt.datetime:
        return dt.datetime(at.year, at.month, at.day, at.hour)

    def after(self, at: dt.datetime) -> dt.datetime:
        return at + dt.timedelta(hours=1)

    def key(self, at: dt.datetime) -> str:
        return at.isoformat(timespec="hours")


class Monthly(_TimePartitions):
    """One partition per calendar month (keys ``2024-01``)."""

    kind: Literal["monthly"] = "monthly"
    step_name: ClassVar[str] = "monthly"
    key_format: ClassVar[str] = "%Y-%m"

    def floor(self, at: dt.datetime) -> dt.datetime:
        return dt.datetime(at.year, at.month, 1)

    def after(self, at: dt.datetime) -> dt.datetime:
        return dt.datetime(at.year + at.month // 12, at.month % 12 + 1, 1)

    def key(self, at: dt.datetime) -> str:
        return at.date().isoformat()[:7]


class Static(BaseModel):
    """A fixed list of partitions by value: ``Static(column="region", values=["EU", "US"])``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["static"] = "static"
    column: str
    values: list[str | int] = Field(min_length=1)
    lookback: int = 0
    time_type: ClassVar[str] = ""

    @model_validator(mode="after")
    def _distinct(self) -> Static:
        keys = [str(v) for v in self.values]
        if len(set(keys)) != len(keys):
            raise ValueError("static partition values must be distinct")
        return self

    def partitions(
        self, now: dt.datetime, *, start: Any = None, end: Any = None
    ) -> list[Partition]:
        del now, start, end  # static partitions do not depend on time
        return [Partition(str(v), value=v) for v in self.values]

    def parse_key(self, key: str) -> Partition:
        for v in self.values:
            if str(v) == key:
                return Partition(key, value=v)
        raise ValueError(f"{key!r} is not one of the partitions {[str(v) for v in self.values]}")

    def describe(self) -> str:
        return f"static on {self.column}: {len(self.values)} value(s)"


Partitioning = Annotated[Daily | Hourly | Monthly | Static, Field(discriminator="kind")]


def partitioning_shorthand(value: Any) -> Any:
    """``{daily: {start: …, column: …}}`` is shorthand for ``{kind: daily, start: …}``."""
    if isinstance(value, dict) and "kind" not in value and len(value) == 1:
        ((kind, body),) = value.items()
        if kind in _KINDS and isinstance(body, dict):
            return {"kind": kind, **body}
        if isinstance(body, dict):
            # Without this, pydantic reports that it cannot find the discriminator.
            raise ValueError(f"unknown partitions kind {kind!r}: use one of {', '.join(_KINDS)}")
    return value


def partition_predicate(spec: Any, partition: Partition) -> str:
    """The DuckDB condition selecting a partition's rows (DuckDB compares a ``DATE`` or
    ``TIMESTAMP`` literal with a column of either type)."""
    from sqlglot import exp

    column = exp.column(spec.column, quoted=True)
    if partition.start is None or partition.end is None:
        return exp.EQ(this=column, expression=exp.convert(partition.value)).sql("duckdb")
    literals = partition.macros(spec.time_type)
    col = column.sql("duckdb")
    return f"{col} >= {literals['start']} AND {col} < {literals['end']}"


def delta_partition_predicate(spec: Any, partition: Partition, column_type: Any) -> str:
    """The Delta Lake (DataFusion) condition selecting a partition's rows of a column of
    Arrow type ``column_type``.

    Delta compares a column only with a literal of the same type: a ``DATE`` literal
    against a timestamp column, or a ``TIMESTAMP`` literal (nanoseconds, no zone) against
    a microsecond or zoned one, fails the commit. A date column gets ``DATE`` literals;
    anything else an ISO string, which is cast to the column's type (``Z``: boundaries
    are UTC instants for a zoned column).
    """
    import pyarrow as pa
    from sqlglot import exp

    if partition.start is None or partition.end is None:
        return partition_predicate(spec, partition)

    def literal(at: dt.datetime) -> str:
        if pa.types.is_date(column_type) and at.time() == dt.time():
            return f"DATE '{at.date().isoformat()}'"
        if pa.types.is_timestamp(column_type) and column_type.tz is not None:
            return f"'{at.isoformat()}Z'"
        if not pa.types.is_timestamp(column_type) and at.time() == dt.time():
            return f"'{at.date().isoformat()}'"
        return f"'{at.isoformat()}'"

    col = exp.column(spec.column, quoted=True).sql("duckdb")
    return f"{col} >= {literal(partition.start)} AND {col} < {literal(partition.end)}"


def expand_macros(sql: str, partition: Partition, time_type: str) -> str:
    """Replace ``@start``, ``@end`` and ``@partition`` outside strings and comments."""
    from sqlglot.tokens import Tokenizer, TokenType

    values = partition.macros(time_type)
    out: list[str] = []
    pos = 0
    tokens = Tokenizer().tokenize(sql)
    for at, name in itertools.pairwise(tokens):
        if at.text != "@" or name.start != at.end + 1:
            continue
        word = name.text.lower()
        if name.token_type in (TokenType.STRING,) or word not in _MACROS:
            continue
        if word not in values:
            raise ValueError(f"@{word} is not defined for this partition ({partition.key})")
        out.append(sql[pos : at.start])
        out.append(values[word])
        pos = name.end + 1
    out.append(sql[pos:])
    return "".join(out)


def uses_macros(sql: str, tokens: Sequence[Any] | None = None) -> set[str]:
    """Which of ``@start``/``@end``/``@partition`` a SQL text uses (``tokens``: the text
    already tokenized, e.g. in the project dialect)."""
    from sqlglot.tokens import Tokenizer

    if "@" not in sql:
        return set()
    if tokens is None:
        tokens = Tokenizer().tokenize(sql)
    return {
        name.text.lower()
        for at, name in itertools.pairwise(tokens)
        if at.text == "@" and name.start == at.end + 1 and name.text.lower() in _MACROS
    }


@functools.lru_cache(maxsize=256)
def _walk(spec: _TimePartitions, first: dt.datetime, limit: dt.datetime) -> tuple[Partition, ...]:
    """The partitions from ``first`` up to ``limit``; shared (they are immutable) by every
    dataset partitioned the same way, so planning many datasets computes them once."""
    out: list[Partition] = []
    at = first
    while True:
        following = spec.after(at)
        if following > limit:
            return tuple(out)
        out.append(Partition(spec.key(at), at, following))
        at = following


def _naive(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(tzinfo=None) if at.tzinfo is not None else at


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return _naive(value)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return _naive(dt.datetime.fromisoformat(str(value)))
