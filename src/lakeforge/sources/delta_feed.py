"""An upstream Delta dataset read incrementally: the source of a streaming table that
reads another dataset rather than an external system.

The position is the upstream version read up to. The first micro-batch reads the upstream
as it is (its current snapshot); every later one reads the rows the upstream's newer
versions *appended*, through the Delta change data feed (``DeltaTable.load_cdf``), a few
versions at a time (``stream_from.max_versions_per_batch``). Versions that change no data
(``OPTIMIZE``, ``VACUUM``, property changes) are skipped. A version that rewrites or
deletes rows (a merge, an overwrite, a delete) cannot be told apart from new data, so it
stops the stream with an error that says which version and what to do — unless
``skip_change_commits`` is set, when such versions are ignored and only appends are read
(Spark's ``skipChangeCommits``).

The rows reach the transform under the upstream's name, exactly as in a batch build; the
table's other inputs are read whole, pinned when the micro-batch starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeforge.errors import ConfigError, SourceError
from lakeforge.sources.base import Source, SourceBatch, SourceStatus

if TYPE_CHECKING:
    from lakeforge.graph.spec import Dataset, StreamFrom
    from lakeforge.storage.delta import DeltaStore

#: Columns the change data feed adds; appended rows do not keep them.
_CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


@dataclass
class FeedPosition:
    """The upstream version read up to (-1: nothing read yet)."""

    version: int = -1


class DeltaFeedSource(Source):
    """New rows of an upstream dataset's table, version after version."""

    kind = "delta"

    def __init__(
        self,
        dataset: str,
        project_root: Path,
        upstream: str,
        store: DeltaStore,
        settings: StreamFrom,
    ) -> None:
        super().__init__(dataset, project_root)
        self.upstream = upstream
        self.store = store
        self.settings = settings
        #: the transform reads the batch under the upstream's name (sources/base.py)
        self.input_name = upstream

    def recover(self, committed: Iterable[dict[str, Any]]) -> FeedPosition:
        for state in committed:
            if state.get("kind") == self.kind and state.get("upstream") == self.upstream:
                return FeedPosition(int(state["version"]))
        return FeedPosition()

    def fresh(self) -> FeedPosition:
        return FeedPosition()

    def _current(self) -> int | None:
        return self.store.version(self.upstream)

    def pending(self, position: Any) -> str | None:
        current = self._current()
        if current is None:
            return None
        read: int = position.version
        if read < 0:
            return f"{self.upstream} v{current} not read yet"
        if current > read:
            return f"{current - read} new version(s) of {self.upstream}"
        return None

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        current = self._current()
        if current is None:
            return
        read: int = position.version
        if read < 0:
            snapshot = self.store.read(self.upstream, current).to_table()
            yield self._batch(snapshot, current, f"{self.upstream} v{current} (snapshot)", 1)
            return
        step = self.settings.max_versions_per_batch
        while read < current:
            end = min(current, read + step)
            rows, skipped = self._appended(read + 1, end)
            described = (
                f"{self.upstream} v{read + 1}–v{end}"
                if end > read + 1
                else (f"{self.upstream} v{end}")
            )
            if skipped:
                described += f" ({len(skipped)} change commit(s) skipped)"
            yield self._batch(rows, end, described, end - read)
            read = end

    def _batch(self, data: Any, version: int, description: str, units: int) -> SourceBatch:
        state = {"kind": self.kind, "upstream": self.upstream, "version": version}
        return SourceBatch(data=data, state=state, description=description, units=units)

    def _appended(self, first: int, last: int) -> tuple[Any, list[int]]:
        """Rows inserted by versions ``first``..``last``; versions that rewrote rows are
        an error, or skipped (their numbers returned) with ``skip_change_commits``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = self.store.open(self.upstream)
        try:
            feed = pa.table(table.load_cdf(starting_version=first, ending_version=last).read_all())
        except Exception as exc:  # delta-rs raises its own error types
            raise SourceError(
                f"{self.dataset}: cannot read the changes of {self.upstream} "
                f"v{first}–v{last}: {exc}",
                dataset=self.dataset,
                hint="versions removed by VACUUM or log cleanup cannot be read: "
                f"`lakeforge run --full-refresh {self.dataset}` restarts from the current "
                "snapshot",
            ) from None
        feed = _without_views(feed)
        schema = self.store.schema(self.upstream, last)
        if feed.num_rows == 0:
            assert schema is not None
            return schema.empty_table(), []
        changed = pc.not_equal(feed.column("_change_type"), "insert")
        skipped: list[int] = []
        if pc.any(changed).as_py():
            versions = sorted(
                {int(v) for v in feed.filter(changed).column("_commit_version").to_pylist()}
            )
            if not self.settings.skip_change_commits:
                raise SourceError(
                    f"{self.dataset}: {self.upstream} v{versions[0]} rewrote or deleted rows "
                    "(a merge, an overwrite or a delete); a stream reads appended rows only",
                    dataset=self.dataset,
                    hint="set stream_from: {dataset: "
                    f"{self.upstream}, skip_change_commits: true}} to ignore such versions, "
                    f"or `lakeforge run --full-refresh {self.dataset}` to start again from "
                    "its current snapshot",
                )
            skipped = versions
            keep = pc.invert(pc.is_in(feed.column("_commit_version"), pa.array(versions)))
            feed = feed.filter(keep)
        feed = feed.drop_columns([c for c in _CDF_COLUMNS if c in feed.column_names])
        if schema is not None and set(schema.names) == set(feed.column_names):
            feed = feed.select(schema.names).cast(schema)
        return feed, skipped

    def status(self, position: Any) -> SourceStatus:
        current = self._current()
        read: int = position.version
        return SourceStatus(
            kind=self.kind,
            target=self.upstream,
            consumed=max(read + 1, 0),
            pending=0 if current is None else max(current - max(read, -1), 0),
            details={"version_read": None if read < 0 else read, "upstream_version": current},
        )


def _without_views(table: Any) -> Any:
    """``table`` with string_view / binary_view columns (what delta-rs's feed gives, and
    what several compute kernels lack) as plain string / binary."""
    import pyarrow as pa

    fields = []
    for f in table.schema:
        if pa.types.is_string_view(f.type):
            f = f.with_type(pa.string())
        elif pa.types.is_binary_view(f.type):
            f = f.with_type(pa.binary())
        fields.append(f)
    target = pa.schema(fields, metadata=table.schema.metadata)
    return table if target.equals(table.schema) else table.cast(target)


def stream_input(ds: Dataset) -> str:
    """The input a streaming table without a source reads incrementally."""
    settings = ds.config.stream_from
    if settings is not None and settings.dataset is not None:
        if settings.dataset not in ds.inputs:
            raise ConfigError(
                f"{ds.name}: stream_from {settings.dataset!r} is not one of its inputs "
                f"({', '.join(ds.inputs) or 'none'})",
                dataset=ds.name,
                location=ds.location,
            )
        return settings.dataset
    if len(ds.inputs) == 1:
        return ds.inputs[0]
    if not ds.inputs:
        raise ConfigError(
            f"{ds.name}: a streaming table needs something to stream from: a source, or an "
            "upstream dataset",
            dataset=ds.name,
            location=ds.location,
            hint="add source: {...}, or read another dataset",
        )
    raise ConfigError(
        f"{ds.name}: a streaming table reads {', '.join(ds.inputs)}; say which one is the stream",
        dataset=ds.name,
        location=ds.location,
        hint=f"stream_from: {ds.inputs[0]} (the others are read whole at each micro-batch)",
    )
