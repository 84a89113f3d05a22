"""``lakeforge checks``: quality results — latest per check, history, and one run's failures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, print_json

if TYPE_CHECKING:
    from lakeforge.metadata.models import CheckResultRecord

STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "error": "red"}
_FETCH = 5000


def checks(
    ctx: typer.Context,
    target: list[str] | None = typer.Argument(
        None,
        metavar="[DATASET | show RUN]",
        help="A dataset (default: all), or `show RUN` for one run's failures with samples.",
    ),
    history: bool = typer.Option(
        False, "--history", help="Every result over time, newest first, not just the latest."
    ),
    name: str | None = typer.Option(None, "--check", help="Only this check (by name)."),
    status: list[str] | None = typer.Option(
        None, "--status", help="Only these statuses (pass, warn, fail, error); repeatable."
    ),
    limit: int = typer.Option(50, "--limit", min=1, help="Rows shown with --history."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Quality results: the latest result of every check, its history, or a run's failures."""
    from lakeforge.cli.app import settings
    from lakeforge.errors import ConfigError
    from lakeforge.metadata.models import CHECK_STATUSES
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project

    args = list(target or [])
    project = load_project(settings(ctx).project_dir)
    with MetadataStore(project.metadata_url) as store:
        if args[:1] == ["show"]:
            if len(args) != 2:
                raise ConfigError(
                    "usage: lakeforge checks show RUN", hint="`lakeforge history` lists runs"
                )
            _show_run(store, args[1], as_json)
            return
        if len(args) > 1:
            raise ConfigError(
                f"expected one dataset, got {len(args)}: {' '.join(args)}",
                hint="lakeforge checks [DATASET] or lakeforge checks show RUN",
            )
        dataset = args[0] if args else None
        if dataset is not None:
            project.graph[dataset]  # an unknown name fails with a did-you-mean hint
        for value in status or []:
            if value not in CHECK_STATUSES:
                raise ConfigError(
                    f"unknown status {value!r}", hint="use " + ", ".join(CHECK_STATUSES)
                )
        results = store.list_check_results(
            dataset=dataset,
            name=name,
            status=(status or None) if history else None,
            limit=limit if history else _FETCH,
        )
    if not history:
        # Latest result of each check first, then the status filter: a check that failed
        # once and passes now is not listed as failing.
        results = [r for r in _latest(results) if not status or r.status in status]
    if as_json:
        print_json([_record_dict(r) for r in results])
        return
    if not results:
        console.print("no check results yet" + (f" for {dataset}" if dataset else ""))
        return
    console.print(_results_table(results, history=history))


def _latest(results: list[CheckResultRecord]) -> list[CheckResultRecord]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in results:  # newest first
        key = (r.dataset, r.name)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return sorted(out, key=lambda r: (r.dataset, r.origin != "expectation", r.name))


def _results_table(results: list[CheckResultRecord], *, history: bool) -> Table:
    title = "check history" if history else "latest check results"
    table = Table(title=title, title_justify="left")
    columns = ["dataset", "check", "status", "result", "rule", "at"]
    if history:
        columns.append("run")
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in results:
        style = STATUS_STYLE.get(r.status, "")
        # A result of a run whose batch was not published (blocked, or failed later).
        marker = "" if r.published else "*"
        row = [
            r.dataset,
            escape(r.name) + (f" [dim]({r.origin})[/]" if r.origin != "check" else ""),
            f"[{style}]{r.status}{marker}[/]",
            escape(r.message or ""),
            escape(r.threshold or ""),
            r.created_at.strftime("%m-%d %H:%M"),
        ]
        if history:
            row.append(r.run_id)
        table.add_row(*row)
    if any(not r.published for r in results):
        table.caption = "* the batch checked was not published"
    return table


def _show_run(store: Any, run_id: str, as_json: bool) -> None:
    run = store.get_run(run_id)  # a unique prefix is enough; an unknown run is a clear error
    run_id = run.id
    results = store.list_check_results(run_id=run_id)
    failures = [r for r in results if r.status != "pass"]
    candidates = {
        t.dataset: t.metrics["candidate"] for t in run.tasks if t.metrics.get("candidate")
    }
    gated = bool((run.options or {}).get("gate", True))
    if as_json:
        print_json(
            {
                "run_id": run_id,
                "gate": gated,
                "results": len(results),
                "failures": [_record_dict(r) for r in failures],
                "candidates": candidates,
            }
        )
        return
    passed = len(results) - len(failures)
    console.print(
        f"run [bold]{run_id}[/]: {len(results)} result(s), {passed} passed, "
        f"{len(failures)} not passing" + ("" if gated else " — [bold yellow]run with --no-gate[/]")
    )
    for r in sorted(failures, key=lambda r: (r.dataset, r.status != "fail", r.name)):
        style = STATUS_STYLE.get(r.status, "")
        console.print(
            f"\n[{style}]{r.status.upper()}[/] [bold]{r.dataset}[/] {escape(r.name)} "
            f"[dim]({r.origin}, {r.severity})[/]: {escape(r.message or '')}"
        )
        if r.threshold:
            console.print(f"  [dim]rule:[/] {escape(r.threshold)}")
        if r.sample:
            console.print(_sample_table(r.sample, r.failing))
    for dataset, path in candidates.items():
        console.print(
            f"\n[bold]{dataset}[/]: nothing was published; the candidate is kept in {path}\n"
            f"  [dim]inspect it:[/] lakeforge sql \"SELECT * FROM read_parquet('{path}')\""
        )


def _sample_table(sample: list[dict[str, Any]], failing: int | None) -> Table:
    shown = len(sample)
    title = f"  sample: {shown} of {failing:,} failing row(s)" if failing else f"  sample: {shown}"
    table = Table(title=title, title_justify="left", show_lines=False)
    columns = list(sample[0])
    for col in columns:
        table.add_column(escape(col), overflow="fold", max_width=40)
    for row in sample:
        table.add_row(*("∅" if row.get(c) is None else escape(str(row.get(c))) for c in columns))
    return table


def _record_dict(r: CheckResultRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "dataset": r.dataset,
        "name": r.name,
        "type": r.check_type,
        "origin": r.origin,
        "severity": r.severity,
        "status": r.status,
        "scope": r.scope,
        "value": r.value,
        "failing": r.failing,
        "total": r.total,
        "threshold": r.threshold,
        "message": r.message,
        "sample": r.sample,
        "published": r.published,
        "created_at": r.created_at.isoformat(),
    }


def register(app: typer.Typer) -> None:
    app.command()(checks)
