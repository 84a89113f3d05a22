"""Breaking and non-breaking changes of a SQL model, and which columns a model reads.

A change to a model that only **adds output columns** — every projection it had is still
there, unchanged, and nothing else in the query changed — is *non-breaking*: the model is
rebuilt, but a consumer that reads none of the added columns gets the same rows it had,
so it is not rebuilt. Anything else (a changed expression, filter, join, grouping, a
removed column, a configuration change, a Python transform) is *breaking*.

Which columns a consumer reads is decided conservatively from its SQL: every column name
it mentions, whatever table qualifies it; a ``*`` or a Python transform reads everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sqlglot
from sqlglot import exp

from lakeforge.sql.model import DIALECT


@dataclass(frozen=True)
class Change:
    """How a definition changed: ``non_breaking`` with the ``added`` columns, or not."""

    non_breaking: bool
    added: tuple[str, ...] = ()

    def to_metadata(self) -> dict[str, object]:
        return {"kind": "non_breaking" if self.non_breaking else "breaking",
                "added": list(self.added)}  # fmt: skip

    def describe(self) -> str:
        if self.non_breaking:
            return f"non-breaking: adds {', '.join(self.added)}"
        return "breaking"


BREAKING = Change(False)


def classify_change(old_sql: str | None, new_sql: str | None) -> Change:
    """Compare two SQL definitions of one model (None: unknown or Python → breaking)."""
    if not old_sql or not new_sql:
        return BREAKING
    old, new = _parse(old_sql), _parse(new_sql)
    if not isinstance(old, exp.Select) or not isinstance(new, exp.Select):
        return BREAKING
    old_cols = [p.sql(DIALECT) for p in old.expressions]
    new_cols = [p.sql(DIALECT) for p in new.expressions]
    kept = set(new_cols)
    if any(col not in kept for col in old_cols):
        return BREAKING
    added_projections = [p for p in new.expressions if p.sql(DIALECT) not in set(old_cols)]
    if not added_projections or any(
        _selects_all(star) for p in added_projections for star in p.find_all(exp.Star)
    ):
        return BREAKING
    if _without_projections(old) != _without_projections(new):
        return BREAKING
    names = tuple(
        p.alias if isinstance(p, exp.Alias) else p.name if isinstance(p, exp.Column) else ""
        for p in added_projections
    )
    if not all(names):
        return BREAKING  # an unnamed expression: its column name is the engine's guess
    return Change(True, names)


@dataclass(frozen=True)
class ColumnUse:
    """The column names a model mentions (lower case); ``everything`` when it cannot be
    told (``*``, a Python transform)."""

    names: frozenset[str]
    everything: bool

    def reads_any(self, columns: tuple[str, ...] | list[str]) -> bool:
        return self.everything or any(c.lower() in self.names for c in columns)


def column_use(sql: str | None) -> ColumnUse:
    """Which columns a model's SQL reads (``None``: a Python transform → everything)."""
    if sql is None:
        return ColumnUse(frozenset(), True)
    return _column_use(sql)


@lru_cache(maxsize=4096)
def _column_use(sql: str) -> ColumnUse:
    tree = _parse(sql)
    if tree is None:
        return ColumnUse(frozenset(), True)
    if any(_selects_all(star) for star in tree.find_all(exp.Star)):
        return ColumnUse(frozenset(), True)
    names = frozenset(c.name.lower() for c in tree.find_all(exp.Column) if c.name)
    return ColumnUse(names, False)


@lru_cache(maxsize=4096)
def _parse(sql: str) -> exp.Expression | None:
    try:
        tree = sqlglot.parse_one(sql, dialect=DIALECT)
    except sqlglot.errors.ParseError:
        return None
    return tree if isinstance(tree, exp.Expression) else None


def _selects_all(star: exp.Star) -> bool:
    """``*`` / ``t.*`` in a select list, not the ``*`` of ``count(*)``."""
    parent = star.parent
    return not isinstance(parent, exp.Func) or isinstance(parent, exp.Column)


def _without_projections(select: exp.Select) -> str:
    copy = select.copy()
    copy.set("expressions", [exp.Literal.number(1)])
    return copy.sql(DIALECT, normalize=True, comments=False)
