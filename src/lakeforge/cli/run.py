"""``lakeforge run`` and ``lakeforge dag``."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from lakeforge.cli.output import console, err_console, print_error, print_json

if TYPE_CHECKING:
    from lakeforge.execution.results import RunResult
    from lakeforge.project.loader import Project


def run(
    ctx: typer.Context,
    selection: list[str] | None = typer.Argument(
        None,
        help="What to run: name, +name (with upstream), name+ (with downstream), "
        "layer:silver, tag:x — several terms are a union. Default: everything.",
    ),
    full_refresh: bool = typer.Option(False, "--full-refresh", help="Rebuild tables from scratch."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would run and why."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Datasets built at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the run result as JSON."),
    no_gate: bool = typer.Option(
        False,
        "--no-gate",
        help="Emergencies only: evaluate checks but publish even when blocking ones fail "
        "(recorded in the run).",
    ),
) -> None:
    """Build every stale dataset of the selection, in dependency order."""
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import load_project

    opts = settings(ctx)
    project = load_project(opts.project_dir)
    _execute(
        project,
        selection,
        as_json=as_json,
        debug=opts.debug,
        full_refresh=full_refresh,
        dry_run=dry_run,
        threads=threads,
        gate=not no_gate,
    )


def _execute(
    project: Project, selection: list[str] | None, *, as_json: bool, debug: bool, **kw: Any
) -> RunResult:
    """Run, show progress and the summary (or print JSON); exit 1 when a task failed."""
    from lakeforge.execution.executor import Runner
    from lakeforge.observability.progress import RunProgress, check_summary, summary_table

    if as_json:
        result = Runner(project).run(selection, **kw)
        print_json(result.to_dict())
    else:
        with RunProgress(err_console) as progress:
            result = Runner(project, listener=progress).run(selection, **kw)
        console.print(summary_table(result))
        if not kw.get("gate", True) and not result.dry_run:
            err_console.print(
                "[bold yellow]warning:[/] --no-gate: blocking checks did not stop any publish "
                "(recorded in the run)"
            )
        built = sum(t.status == "success" for t in result.tasks)
        fresh = sum(t.status == "up_to_date" for t in result.tasks)
        failed = [t for t in result.tasks if t.status == "failed"]
        if not result.dry_run:
            console.print(
                f"{built} built, {fresh} up to date, {len(failed)} failed, "
                f"{sum(t.status == 'upstream_failed' for t in result.tasks)} skipped "
                f"in {(result.finished_at - result.started_at).total_seconds():.1f}s"
                + check_summary(result.check_counts())
            )
        for t in failed:
            if t.error is not None:
                print_error(t.error, debug=debug, trace=t.traceback)
    if not result.ok:
        raise typer.Exit(1)
    return result


def retry(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="The run (its id, or a unique prefix of it)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would run and why."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Datasets built at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the run result as JSON."),
) -> None:
    """Run again only what a run did not finish: its failed, skipped and interrupted
    datasets, and of partitioned ones the partitions it left failed."""
    from lakeforge.cli.app import settings
    from lakeforge.execution.retry import plan_retry
    from lakeforge.metadata.intervals import IntervalLedger
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project

    opts = settings(ctx)
    project = load_project(opts.project_dir)
    with MetadataStore(project.metadata_url) as metadata:
        request = plan_retry(metadata, IntervalLedger(metadata), project.graph.datasets, run_id)
    for name in request.missing:
        err_console.print(
            f"[yellow]warning:[/] {escape(name)} failed in run {request.run_id} but is no "
            "longer defined; not retried"
        )
    if not request.datasets:
        if as_json:
            print_json({"retry_of": request.run_id, "datasets": [], "run": None})
        else:
            console.print(f"run {request.run_id}: nothing failed, nothing to retry")
        return
    if not as_json:
        shown = ", ".join(
            f"{name} ({len(request.partitions[name])} partition(s))"
            if name in request.partitions
            else name
            for name in request.datasets
        )
        err_console.print(f"retrying run {request.run_id}: {escape(shown)}")
    _execute(
        project,
        request.datasets,
        as_json=as_json,
        debug=opts.debug,
        full_refresh=request.full_refresh,
        dry_run=dry_run,
        threads=threads,
        gate=request.gate,
        backfill=request.partitions or None,
        options=request.options(),
    )


class DagFormat(StrEnum):
    text = "text"
    mermaid = "mermaid"
    dot = "dot"
    json = "json"


def dag(
    ctx: typer.Context,
    selection: list[str] | None = typer.Argument(None, help="Restrict to a selection."),
    fmt: DagFormat = typer.Option(DagFormat.text, "--format", "-f", help="Output format."),
) -> None:
    """Show the dataset graph."""
    from lakeforge.cli.app import settings
    from lakeforge.graph.render import render_dot, render_json, render_mermaid, render_text
    from lakeforge.graph.selection import select
    from lakeforge.project.loader import load_project

    project = load_project(settings(ctx).project_dir)
    names = select(project.graph, selection)
    if fmt is DagFormat.json:
        print_json(render_json(project.graph, names))
        return
    render = {
        DagFormat.text: render_text,
        DagFormat.mermaid: render_mermaid,
        DagFormat.dot: render_dot,
    }[fmt]
    typer.echo(render(project.graph, names))


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(retry)
    app.command()(dag)
