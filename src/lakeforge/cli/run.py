"""``lakeforge run`` and ``lakeforge dag``."""

from __future__ import annotations

from enum import StrEnum

import typer

from lakeforge.cli.output import console, err_console, print_error, print_json


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
    from lakeforge.execution.executor import Runner
    from lakeforge.observability.progress import RunProgress, check_summary, summary_table
    from lakeforge.project.loader import load_project

    opts = settings(ctx)
    project = load_project(opts.project_dir)
    if as_json:
        result = Runner(project).run(
            selection,
            full_refresh=full_refresh,
            dry_run=dry_run,
            threads=threads,
            gate=not no_gate,
        )
        print_json(result.to_dict())
    else:
        with RunProgress(err_console) as progress:
            runner = Runner(project, listener=progress)
            result = runner.run(
                selection,
                full_refresh=full_refresh,
                dry_run=dry_run,
                threads=threads,
                gate=not no_gate,
            )
        console.print(summary_table(result))
        if no_gate and not dry_run:
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
                print_error(t.error, debug=opts.debug, trace=t.traceback)
    if not result.ok:
        raise typer.Exit(1)


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
    app.command()(dag)
