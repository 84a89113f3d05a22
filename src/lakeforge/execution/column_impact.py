"""Whether an input's change matters to a consumer: non-breaking additions it does not read.

A dataset rebuilt only because of a non-breaking code change (it added output columns,
``sql/changes.py``) records the change in its commit. A consumer whose input moved on only
by such commits, adding columns the consumer does not read, reads the same rows as before:
it is not rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lakeforge.sql.changes import BREAKING, Change, classify_change, column_use

if TYPE_CHECKING:
    from lakeforge.graph.spec import Dataset
    from lakeforge.storage.delta import CommitInfo, DeltaStore


class ColumnImpact:
    """Change classification and impact checks for one planning pass (results cached)."""

    def __init__(
        self, store: DeltaStore, definition: Callable[[str, str], str | None] | None
    ) -> None:
        self.store = store
        self.definition = definition
        self._since: dict[tuple[str, int], list[tuple[int, CommitInfo | None]]] = {}

    def classify(self, ds: Dataset, old_fingerprint: str) -> Change:
        """How ``ds`` changed since it was built from ``old_fingerprint``."""
        if ds.sql is None or self.definition is None:
            return BREAKING
        return classify_change(self.definition(ds.name, old_fingerprint), ds.sql)

    def unread_additions(
        self,
        consumer: Dataset,
        upstream: str,
        seen: int,
        current: int,
        partition: str | None = None,
    ) -> tuple[str, ...] | None:
        """The columns ``upstream`` added in ``(seen, current]`` if that is all it did and
        ``consumer`` reads none of them; None when the change may matter.

        ``partition``: only commits of that partition (or of the whole table) count.
        """
        use = column_use(consumer.sql)
        if use.everything:
            return None
        key = (upstream, seen)
        if key not in self._since:
            self._since[key] = self.store.data_commits_since(upstream, seen)
        added: list[str] = []
        relevant = 0
        for version, info in self._since[key]:
            if version > current:
                continue
            if info is None:
                return None  # another writer: unknown change
            if partition is not None and info.partition not in (None, partition):
                continue
            relevant += 1
            change = info.change or {}
            if change.get("kind") != "non_breaking":
                return None
            columns = [str(c) for c in change.get("added", [])]
            if use.reads_any(columns):
                return None
            added += [c for c in columns if c not in added]
        return tuple(added) if relevant else None


def upstream_skip(consumer: Dataset, additions: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``additions`` when ``consumer`` reads none of them (a rebuild planned in this run)."""
    if additions is None:
        return None
    return None if column_use(consumer.sql).reads_any(additions) else additions
