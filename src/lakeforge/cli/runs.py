"""The run history: ``lakeforge history`` without a dataset, and ``lakeforge prune-history``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer

from lakeforge.cli.output import console, print_json

if TYPE_CHECKING:
    from lakeforge.metadata.models import RunRecord, StreamSummary
    from lakeforge.project.loader import Project


def show_runs(project: Project, limit: int, stream: str | None, as_json: bool) -> None:
    """Recent runs, newest first; each ``lakeforge stream``'s micro-batch runs folded into
    one entry, or, with ``stream``, that stream's micro-batch runs."""
    from lakeforge.metadata.store import MetadataStore

    metadata = MetadataStore(project.metadata_url)
    if stream is not None:
        entries: list[RunRecord | StreamSummary] = list(metadata.list_runs(limit, stream_id=stream))
        if not entries:
            raise typer.BadParameter(
                f"no run of stream {stream!r} in the run history "
                "(`lakeforge history` lists the streams)",
                param_hint="--stream",
            )
    else:
        entries = [*metadata.list_runs(limit, micro_batches=False)]
        entries += metadata.list_streams(limit)
        entries = sorted(entries, key=_started, reverse=True)[:limit]
    if as_json:
        print_json([_as_json(e) for e in entries])
        return
    from rich.table import Table

    title = f"micro-batch runs of stream {stream}" if stream else "runs"
    table = Table(title=title, title_justify="left")
    for col in ("run", "status", "started", "duration", "selection", "error"):
        table.add_column(col)
    for e in entries:
        table.add_row(*_row(e))
    console.print(table)


def _started(entry: RunRecord | StreamSummary) -> datetime:
    from lakeforge.metadata.models import StreamSummary

    return entry.last.started_at if isinstance(entry, StreamSummary) else entry.started_at


def _as_json(entry: RunRecord | StreamSummary) -> dict[str, Any]:
    from lakeforge.metadata.models import StreamSummary

    if isinstance(entry, StreamSummary):
        last = entry.last
        return {
            "kind": "stream",
            "stream_id": entry.stream_id,
            "micro_batches": entry.micro_batches,
            "failed": entry.failed,
            "first_started_at": entry.first_started_at,
            "last_started_at": last.started_at,
            "last_finished_at": last.finished_at,
            "last_run": last.id,
            "status": last.status,
            "selection": last.selection,
            "error": last.error,
        }
    return {"kind": "run", **{k: v for k, v in vars(entry).items() if k != "tasks"}}


def _row(entry: RunRecord | StreamSummary) -> list[str]:
    from lakeforge.metadata.models import StreamSummary

    if isinstance(entry, StreamSummary):
        last = entry.last
        end = last.finished_at or last.started_at
        failed = f" ({entry.failed:,} failed)" if entry.failed else ""
        return [
            f"stream {entry.stream_id}",
            f"{last.status}{failed}",
            entry.first_started_at.isoformat(timespec="seconds"),
            _seconds((end - entry.first_started_at).total_seconds()),
            f"{entry.micro_batches:,} {_plural(entry.micro_batches, 'micro-batch')} of "
            f"{last.selection or 'all'}",
            last.error or "",
        ]
    duration = (
        _seconds((entry.finished_at - entry.started_at).total_seconds())
        if entry.finished_at
        else ""
    )
    return [
        entry.id,
        entry.status,
        entry.started_at.isoformat(timespec="seconds"),
        duration,
        entry.selection or "all",
        entry.error or "",
    ]


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else f"{noun}es" if noun.endswith("h") else f"{noun}s"


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 3600 else f"{seconds / 3600:.1f}h"


def prune_history(
    ctx: typer.Context,
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="Delete runs that started longer ago than this (e.g. 90d; "
        "default: retention.runs, else keep).",
    ),
    micro_batches: str | None = typer.Option(
        None,
        "--micro-batches",
        help="Delete stream micro-batch runs that started longer ago than this "
        "(default: retention.micro_batches, 7d).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count, delete nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Delete old runs (with their tasks and check results) from the run history."""
    from pydantic import ValidationError

    from lakeforge.cli.app import settings
    from lakeforge.metadata.retention import Cutoffs, prune_runs
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.config import RetentionConfig
    from lakeforge.project.loader import load_project

    project = load_project(settings(ctx).project_dir)
    configured = project.config.retention
    try:
        retention = RetentionConfig(
            runs=configured.runs if older_than is None else older_than,
            micro_batches=configured.micro_batches if micro_batches is None else micro_batches,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise typer.BadParameter(
            str(problem["msg"]).removeprefix("Value error, "),
            param_hint="--older-than" if problem["loc"][0] == "runs" else "--micro-batches",
        ) from None
    cutoffs = Cutoffs.of(retention)
    pruned = prune_runs(MetadataStore(project.metadata_url), cutoffs, dry_run=dry_run)
    if as_json:
        print_json({**pruned.as_dict(), "runs_before": cutoffs.runs,
                    "micro_batches_before": cutoffs.micro_batches})  # fmt: skip
        return
    limits = []
    if cutoffs.runs is not None:
        limits.append(f"runs started before {cutoffs.runs.isoformat(timespec='seconds')}")
    if cutoffs.micro_batches is not None:
        limits.append(
            "stream micro-batch runs started before "
            f"{cutoffs.micro_batches.isoformat(timespec='seconds')}"
        )
    if not limits:
        console.print("nothing to prune: retention keeps every run (give --older-than)")
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb} {pruned.runs:,} run(s), {pruned.tasks:,} task(s) and "
        f"{pruned.check_results:,} check result(s): {'; '.join(limits)}"
    )


def register(app: typer.Typer) -> None:
    app.command("prune-history")(prune_history)
