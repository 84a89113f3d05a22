"""``lakeforge freshness``: datasets judged against their freshness SLAs (exit 1 on an error)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, err_console, print_json

if TYPE_CHECKING:
    from lakeforge.scheduling.alerts import Delivery
    from lakeforge.scheduling.freshness import FreshnessResult

STATUS_STYLE = {"fresh": "green", "warn": "yellow", "error": "bold red", "unknown": "dim"}


def freshness(
    ctx: typer.Context,
    selection: list[str] | None = typer.Argument(
        None, help="Datasets to evaluate (selection syntax); default every dataset with an SLA."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    alert: bool = typer.Option(
        False, "--alert", help="Send breaches and resolutions to the alert channels."
    ),
) -> None:
    """Freshness of every dataset with a `freshness:` SLA. Exits 1 when one is at error level.

    Run it from cron or CI: `lakeforge freshness --alert` is the dead-man's switch.
    """
    from lakeforge.cli.app import settings
    from lakeforge.errors import ConfigError
    from lakeforge.graph.selection import select
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.freshness import evaluate

    project = load_project(settings(ctx).project_dir)
    names = select(project.graph, selection)
    if alert and not project.config.alerts:
        raise ConfigError(
            "--alert needs alert channels: no `alerts:` in lakeforge.yml",
            hint="see docs/freshness-alerts.md for webhook, command and log channels",
        )
    deliveries: list[Delivery] = []
    with MetadataStore(project.metadata_url) as metadata:
        results = evaluate(project, names, metadata=metadata)
        if alert:
            from lakeforge.scheduling.alerts import notify_freshness

            deliveries = notify_freshness(project, metadata, results, evaluated_all=not selection)
    if as_json:
        payload: dict[str, object] = {"datasets": [r.to_dict() for r in results]}
        if alert:
            payload["alerts"] = [d.to_dict() for d in deliveries]
        print_json(payload)
    else:
        if results:
            console.print(_table(results))
        else:
            console.print("no dataset of the selection declares `freshness:`")
        # Resolutions are sent even with no result (an SLA removed from every dataset).
        _print_deliveries(deliveries)
    if any(r.status == "error" for r in results):
        raise typer.Exit(1)


def _table(results: list[FreshnessResult]) -> Table:
    from lakeforge.scheduling.freshness import format_age

    table = Table(title="freshness", title_justify="left")
    for col in ("dataset", "status", "age", "threshold", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        style = STATUS_STYLE.get(r.status, "")
        age = "—" if r.age_seconds is None else format_age(r.age_seconds)
        if r.partitioned:
            age = "—" if not r.late_count else f"{age} late"
        table.add_row(
            r.dataset, f"[{style}]{r.status}[/]", age, escape(r.threshold), escape(r.detail)
        )
    return table


def _print_deliveries(deliveries: list[Delivery]) -> None:
    for d in deliveries:
        what = f"{d.event} {d.dataset}" + (f" {d.subject}" if d.subject else "")
        if d.ok:
            err_console.print(f"[dim]alert[/] {escape(what)} ({d.kind}) → {escape(d.channel)}")
        else:
            err_console.print(
                f"[bold yellow]alert not delivered:[/] {escape(what)} ({d.kind}) → "
                f"{escape(d.channel)}: {escape(d.detail)} (retried next time)"
            )


def register(app: typer.Typer) -> None:
    app.command()(freshness)
