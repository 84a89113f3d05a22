"""Table maintenance: compaction, Z-ordering and vacuum. None of it changes rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from lakeforge.errors import ConfigError
from lakeforge.storage.delta import DeltaStore, translate_commit_errors

# Delta's default: files a reader of the last week may still need are kept.
DEFAULT_RETENTION = timedelta(hours=168)


@dataclass
class OptimizeResult:
    dataset: str
    version: int
    files_added: int
    files_removed: int
    zorder: list[str]


def optimize(
    store: DeltaStore,
    dataset: str,
    *,
    zorder: list[str] | None = None,
    target_size: int | None = None,
) -> OptimizeResult:
    """Compact small files, and Z-order by ``zorder`` columns when given."""
    table = store.open(dataset)
    columns = [f.name for f in table.schema().fields]
    for col in zorder or []:
        if col not in columns:
            raise ConfigError(
                f"cannot Z-order {dataset!r} by unknown column {col!r}",
                dataset=dataset,
                column=col,
                hint=f"columns: {', '.join(columns)}",
            )
    with translate_commit_errors(dataset):
        if zorder:
            metrics: dict[str, Any] = table.optimize.z_order(zorder, target_size=target_size)
        else:
            metrics = table.optimize.compact(target_size=target_size)
    return OptimizeResult(
        dataset=dataset,
        version=store.open(dataset).version(),
        files_added=int(metrics.get("numFilesAdded", 0)),
        files_removed=int(metrics.get("numFilesRemoved", 0)),
        zorder=list(zorder or []),
    )


def vacuum(
    store: DeltaStore,
    dataset: str,
    *,
    retain: timedelta = DEFAULT_RETENTION,
    dry_run: bool = False,
    allow_short_retention: bool = False,
) -> list[str]:
    """Delete files no version within ``retain`` needs; returns the files (to be) deleted.

    A retention under the 168 h default would break time travel and concurrent readers, so
    it needs ``allow_short_retention``.
    """
    if retain < DEFAULT_RETENTION and not allow_short_retention:
        raise ConfigError(
            f"retention {retain} is shorter than the {DEFAULT_RETENTION} safety minimum",
            dataset=dataset,
            hint="readers of older versions may break; pass --allow-short-retention to insist",
        )
    table = store.open(dataset)
    with translate_commit_errors(dataset):
        return list(
            table.vacuum(
                retention_hours=int(retain.total_seconds() // 3600),
                dry_run=dry_run,
                enforce_retention_duration=not allow_short_retention,
            )
        )
