"""``lakeforge plan``, ``lakeforge status`` and ``lakeforge backfill``."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, err_console, print_error, print_json


def plan(
    ctx: typer.Context,
    selection: list[str] | None = typer.Argument(
        None, help="What to plan (same syntax as `lakeforge run`). Default: everything."
    ),
    full_refresh: bool = typer.Option(False, "--full-refresh", help="Plan a full rebuild."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Say what `lakeforge run` would build and why — per partition, with code diffs."""
    from lakeforge.cli.app import settings
    from lakeforge.execution.executor import Runner
    from lakeforge.execution.planner import cycle_collector_paused
    from lakeforge.observability.plan_display import plan_report, render_plan
    from lakeforge.project.loader import load_project

    project = load_project(settings(ctx).project_dir)
    runner = Runner(project)
    # The plan holds an object per partition until the report is printed: collecting
    # cycles meanwhile only re-traverses them (see `cycle_collector_paused`).
    with cycle_collector_paused():
        assessments = runner.plan(selection, full_refresh=full_refresh)
        report = plan_report(assessments, project.graph, runner.ledger.definition)
        if as_json:
            print_json(report)
            return
        for line in render_plan(report):
            console.print(line, highlight=False)


def status(
    ctx: typer.Context,
    dataset: str | None = typer.Argument(None, help="One dataset (default: all of them)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Each dataset's state; for a partitioned one, a grid of its partitions."""
    from lakeforge.cli.app import settings
    from lakeforge.execution.executor import Runner
    from lakeforge.observability.plan_display import legend, partition_state, status_grid
    from lakeforge.project.loader import load_project

    project = load_project(settings(ctx).project_dir)
    runner = Runner(project)
    graph = project.graph
    names = [dataset] if dataset else [n for n in graph.order if not graph[n].is_view]
    if dataset is not None and dataset not in graph:
        from lakeforge.errors import DatasetNotFound

        raise DatasetNotFound(f"no dataset named {dataset!r}", dataset=dataset)
    # Upstream datasets are planned too: a partition is stale when an input will be rebuilt.
    assessments = runner.plan([f"+{n}" for n in names])
    rows: list[dict[str, Any]] = []
    for a in assessments:
        if a.dataset not in names:
            continue
        row: dict[str, Any] = {"dataset": a.dataset, "stale": a.stale, "reasons": a.reasons}
        if a.partitions is not None:
            counts: dict[str, int] = {}
            for p in a.partitions.partitions:
                counts[partition_state(p)] = counts.get(partition_state(p), 0) + 1
            row["partitions"] = {"total": len(a.partitions.partitions), **counts}
            if dataset is not None:
                row["partition_states"] = {
                    p.key: partition_state(p) for p in a.partitions.partitions
                }
        elif a.state is not None:
            row["version"] = a.state.version
        rows.append(row)
    if as_json:
        print_json(rows[0] if dataset else rows)
        return
    if dataset is not None:
        a = next(x for x in assessments if x.dataset == dataset)
        row = rows[0]
        if a.partitions is None:
            shown = "up to date" if not a.stale else "; ".join(a.reasons)
            version = f"v{row['version']}" if "version" in row else "never built"
            console.print(f"[bold]{escape(dataset)}[/] {version}: {escape(shown)}")
            return
        parts = graph[dataset].config.partitions
        assert parts is not None
        counts = row["partitions"]
        console.print(
            f"[bold]{escape(dataset)}[/] — {escape(parts.describe())}: "
            + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("built", "stale", "failed", "missing"))
            + f" of {counts['total']}"
        )
        for line in status_grid(a, graph):
            console.print(line)
        console.print(legend())
        return
    table = Table(title="status", title_justify="left")
    for col in ("dataset", "state", "partitions", "why"):
        table.add_column(col)
    for row in rows:
        parts_text = ""
        if "partitions" in row:
            c = row["partitions"]
            parts_text = f"{c.get('built', 0)}/{c['total']} built"
            if c.get("failed"):
                parts_text += f", [red]{c['failed']} failed[/]"
        state = "[yellow]stale[/]" if row["stale"] else "[green]up to date[/]"
        table.add_row(row["dataset"], state, parts_text, escape("; ".join(row["reasons"])))
    console.print(table)


def backfill(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="The partitioned dataset to backfill."),
    start: str | None = typer.Option(None, "--start", help="First partition (a date/time)."),
    end: str | None = typer.Option(None, "--end", help="Last partition, inclusive."),
    downstream: bool = typer.Option(
        False, "--downstream", help="Also rebuild the same range of the datasets downstream."
    ),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Partitions built at once."),
    restart: bool = typer.Option(
        False,
        "--restart",
        help="Rebuild every partition, even those an interrupted run of "
        "the same backfill already rebuilt.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list the partitions."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Rebuild a range of partitions, newest first; resumes after a crash."""
    from lakeforge.cli.app import settings
    from lakeforge.execution.backfill import BackfillSpec, plan_backfill
    from lakeforge.execution.executor import Runner
    from lakeforge.observability.progress import RunProgress
    from lakeforge.project.loader import load_project

    opts = settings(ctx)
    project = load_project(opts.project_dir)
    spec = BackfillSpec(dataset, start, end, downstream)
    listener = None if as_json else RunProgress(err_console)
    runner = Runner(project, listener=listener)
    bplan = plan_backfill(runner, spec, restart=restart)
    if not as_json:
        if bplan.resumed_from:
            done = sum((bplan.already_done or {}).values())
            err_console.print(
                f"resuming backfill run {bplan.resumed_from}: {done} partition(s) it rebuilt "
                "are kept (--restart rebuilds them)"
            )
        for name, keys in bplan.targets.items():
            err_console.print(f"{name}: {len(keys)} partition(s) {min(keys)} … {max(keys)}")
    if dry_run:
        # In the order they would be built: newest first.
        targets = {k: sorted(v, reverse=True) for k, v in bplan.targets.items()}
        if as_json:
            print_json({"targets": targets, "resumed_from": bplan.resumed_from})
        else:
            for name, ordered in targets.items():
                console.print(f"{escape(name)}: {', '.join(ordered)}", highlight=False)
        return
    if not bplan.targets:
        console.print("nothing left to backfill: the interrupted backfill had finished it")
        return
    run = lambda: runner.run(  # noqa: E731 - the same call with and without a progress display
        bplan.selection, backfill=bplan.targets, concurrency=concurrency,
        options={"backfill": spec.to_dict(), "resumes": bplan.resumed_from},
    )  # fmt: skip
    if listener is not None:
        with listener:
            result = run()
    else:
        result = run()
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(_changes_table(result))
        for t in result.tasks:
            if t.error is not None:
                print_error(t.error, debug=opts.debug, trace=t.traceback)
    if not result.ok:
        raise typer.Exit(1)


def _changes_table(result: Any) -> Table:
    """Row counts per partition before and after (the backfill protocol's validation)."""
    table = Table(title=f"backfill {result.run_id}", title_justify="left")
    for col in ("dataset", "partition", "status", "rows before", "rows after", "change"):
        numeric = col.startswith("rows") or col == "change"
        table.add_column(col, justify="right" if numeric else "left")
    for task in result.tasks:
        for p in task.partitions:
            change = ""
            if p.rows is not None and p.rows_before is not None:
                delta = p.rows - p.rows_before
                pct = f" ({delta / p.rows_before:+.1%})" if p.rows_before else ""
                style = "yellow" if delta else "dim"
                change = f"[{style}]{delta:+,}{pct}[/]"
            elif p.rows is not None:
                change = "[dim]new[/]"
            before = "" if p.rows_before is None else f"{p.rows_before:,}"
            after = "" if p.rows is None else f"{p.rows:,}"
            status_text = "[green]built[/]" if p.status == "success" else "[red]failed[/]"
            table.add_row(task.dataset, p.key, status_text, before, after, change)
    return table


def register(app: typer.Typer) -> None:
    app.command()(plan)
    app.command()(status)
    app.command()(backfill)
