"""``lakeforge alerts``: firing alerts from the alert state, and a test message per channel."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, print_json

alerts_app = typer.Typer(
    help="Alerts: what is firing now (`ls`), and a test message to every channel (`test`).",
    no_args_is_help=True,
)

SEVERITY_STYLE = {"warn": "yellow", "error": "bold red"}


@alerts_app.command("ls")
def alerts_ls(
    ctx: typer.Context,
    show_all: bool = typer.Option(False, "--all", help="Resolved alerts too."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Alerts currently firing: event, dataset, severity, since when, undelivered channels."""
    from lakeforge.cli.app import settings
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.alert_book import AlertBook

    project = load_project(settings(ctx).project_dir)
    with MetadataStore(project.metadata_url) as metadata:
        records = AlertBook(metadata, project.config.alerts).records(
            status=None if show_all else "firing"
        )
    if as_json:
        print_json([r.to_dict() for r in records])
        return
    if not records:
        console.print("no alert is firing" if not show_all else "no alert recorded")
        return
    table = Table(title="alerts", title_justify="left")
    columns = ["event", "dataset", "subject", "severity", "since", "count", "last sent", "pending"]
    if show_all:
        columns.insert(4, "status")
    for col in [*columns, "message"]:
        table.add_column(col, overflow="fold")
    for r in records:
        style = SEVERITY_STYLE.get(r.severity, "")
        row = [
            r.event,
            r.dataset,
            escape(r.subject),
            f"[{style}]{r.severity}[/]",
            f"{r.first_fired:%Y-%m-%d %H:%M}",
            str(r.count),
            "—" if r.last_sent is None else f"{r.last_sent:%m-%d %H:%M}",
            ", ".join(r.pending) or "—",
            escape(r.message),
        ]
        if show_all:
            row.insert(4, r.status)
        table.add_row(*row)
    console.print(table)


@alerts_app.command("test")
def alerts_test(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Send a test message to every channel of `alerts:`; exit 1 if one fails."""
    from lakeforge.cli.app import settings
    from lakeforge.errors import ConfigError
    from lakeforge.project.config import STATE_DIR
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.alerts import send_probes
    from lakeforge.scheduling.channels import describe_target

    project = load_project(settings(ctx).project_dir)
    if not project.config.alerts:
        raise ConfigError(
            "no `alerts:` in lakeforge.yml: there is no channel to test",
            hint="see docs/freshness-alerts.md for webhook, command and log channels",
        )
    results = send_probes(project)
    rows = [
        {
            "channel": c.label,
            "type": c.type,
            "target": describe_target(c, project.root, STATE_DIR),
            "ok": sent.ok,
            "detail": sent.detail,
        }
        for c, sent in results
    ]
    if as_json:
        print_json(rows)
    else:
        table = Table(title="alert channels", title_justify="left")
        for col in ("channel", "type", "target", "result"):
            table.add_column(col, overflow="fold")
        for row in rows:
            detail = escape(str(row["detail"]))
            shown = f"[green]ok[/] {detail}" if row["ok"] else f"[red]failed[/] {detail}"
            table.add_row(row["channel"], row["type"], escape(str(row["target"])), shown)
        console.print(table)
    if not all(r["ok"] for r in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
