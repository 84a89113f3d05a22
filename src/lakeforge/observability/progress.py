"""Live progress of a run in the terminal (rich), and its summary table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from lakeforge.execution.planner import Assessment
    from lakeforge.execution.results import PartitionResult, RunResult, TaskResult

STATUS_STYLE = {
    "success": "green",
    "up_to_date": "dim",
    "view": "dim",
    "planned": "yellow",
    "failed": "bold red",
    "upstream_failed": "red",
}


class RunProgress:
    """A run listener showing an overall bar and one spinner per running dataset."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.overall: TaskID | None = None
        self.rows: dict[str, TaskID] = {}

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def on_plan(self, names: list[str], assessments: list[Assessment]) -> None:
        self.overall = self.progress.add_task("datasets", total=len(names))

    def on_task_start(self, dataset: str, reason: str) -> None:
        self.rows[dataset] = self.progress.add_task(
            f"[cyan]{dataset}[/] [dim]{escape(reason)}[/]", total=None
        )

    def on_partition_end(self, dataset: str, result: PartitionResult, total: int) -> None:
        """A partition is done: the dataset's row becomes a bar over its partitions (ETA)."""
        row = self.rows.get(dataset)
        if row is None:
            return
        self.progress.update(row, total=total, advance=1)
        if result.status == "failed":
            self.progress.console.print(
                f"[bold red]✗[/] {dataset} [{escape(result.key)}] "
                f"[dim]{escape((result.error or '').splitlines()[0][:120])}[/]"
            )

    def on_task_end(self, result: TaskResult) -> None:
        row = self.rows.pop(result.dataset, None)
        if row is not None:
            self.progress.remove_task(row)
        if self.overall is not None:
            self.progress.advance(self.overall)
        if result.status in ("success", "failed"):
            style = STATUS_STYLE[result.status]
            self.progress.console.print(
                f"[{style}]{'✓' if result.status == 'success' else '✗'}[/] {result.dataset} "
                f"[dim]{result.duration:.1f}s[/]"
            )


def summary_table(run: RunResult) -> Table:
    """One row per dataset: status, why, rows, versions, time."""
    table = Table(
        title=f"run {run.run_id}" + (" (dry run)" if run.dry_run else ""), title_justify="left"
    )
    for col, justify in [
        ("dataset", "left"),
        ("layer", "left"),
        ("status", "left"),
        ("reason", "left"),
        ("rows", "right"),
        ("checks", "left"),
        ("version", "right"),
        ("time", "right"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for t in run.tasks:
        style = STATUS_STYLE.get(t.status, "")
        version = (
            ""
            if t.output_version is None
            else (
                f"v{t.version_before} → v{t.output_version}"
                if t.version_before is not None
                else f"v{t.output_version}"
            )
        )
        rows = "" if t.rows_out is None else f"{t.rows_out:,}"
        table.add_row(
            t.dataset,
            t.layer or "",
            f"[{style}]{t.status}[/]",
            escape(t.reason),
            rows,
            task_checks(t),
            version,
            f"{t.duration:.1f}s" if t.status in ("success", "failed") else "",
        )
    return table


def task_checks(task: TaskResult) -> str:
    """``5✓ 1⚠ 1✗`` for a task's expectations and checks, plus rows set aside."""
    counts = task.check_counts()
    parts = []
    for status, mark, style in (
        ("pass", "✓", "green"),
        ("warn", "⚠", "yellow"),
        ("fail", "✗", "red"),
        ("error", "!", "red"),
    ):
        if counts.get(status):
            parts.append(f"[{style}]{counts[status]}{mark}[/]")
    held = []
    if task.status != "success":
        return " ".join(parts)  # nothing was written: no rows were set aside either
    if task.metrics.get("rows_quarantined"):
        held.append(f"{task.metrics['rows_quarantined']:,} quarantined")
    if task.metrics.get("rows_dropped"):
        held.append(f"{task.metrics['rows_dropped']:,} dropped")
    if task.metrics.get("rows_dlq"):
        held.append(f"{task.metrics['rows_dlq']:,} dead letters")
    if task.metrics.get("rows_late"):
        held.append(f"{task.metrics['rows_late']:,} late")
    if task.metrics.get("rows_deduplicated"):
        held.append(f"{task.metrics['rows_deduplicated']:,} deduplicated")
    if held:
        parts.append(f"[dim]({', '.join(held)})[/]")
    return " ".join(parts)


def check_summary(counts: dict[str, int]) -> str:
    """``; checks: 12 passed, 1 warned, 1 failed`` (empty when the run had no checks)."""
    if not counts:
        return ""
    verbs = (("pass", "passed"), ("warn", "warned"), ("fail", "failed"), ("error", "errored"))
    words = [f"{counts[s]} {w}" for s, w in verbs if counts.get(s)]
    return "; checks: " + ", ".join(words)
