"""``lakeforge cdc``: the PostgreSQL change-data-capture sources — slot, lag, snapshots.

Lag in bytes is the server's WAL position now minus what the dataset has read (or the slot
has confirmed, whichever is further); lag in seconds is the one the last batch measured: how
long after its newest transaction's commit it was read.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, print_json

cdc_app = typer.Typer(
    help="PostgreSQL change data capture: replication slots, lag, snapshots.",
    no_args_is_help=True,
)


def _open(ctx: typer.Context) -> tuple[Any, Any]:
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import load_project
    from lakeforge.storage.delta import DeltaStore

    project = load_project(settings(ctx).project_dir)
    return project, DeltaStore(project.storage_root, project.config.storage_options)


def _cdc_sources(project: Any, store: Any) -> list[tuple[str, Any]]:
    from lakeforge.sources import source_of
    from lakeforge.sources.postgres_cdc import PostgresCdcSource

    out = []
    for name in project.graph.order:
        source = source_of(project.graph[name], project.root, store)
        if isinstance(source, PostgresCdcSource):
            out.append((name, source))
    return out


def _server_view(source: Any, position: Any) -> dict[str, Any]:
    """What the server says about the slot (or why it cannot say)."""
    from lakeforge.errors import LakeforgeError
    from lakeforge.sources.pgoutput import format_lsn
    from lakeforge.sources.postgres_cdc_config import format_size

    try:
        with source.server() as server:
            slot = server.slot(source.slot)
            wal = server.wal_lsn()
    except LakeforgeError as exc:
        return {"server_error": exc.message}
    if slot is None:
        return {"slot_exists": False}
    confirmed = slot.confirmed_flush or 0
    lag = max(0, wal - max(confirmed, position.lsn or 0))
    guard = source.config.max_lag.level(lag)
    return {
        "slot_exists": True,
        "slot_active_pid": slot.active_pid,
        "confirmed_lsn": format_lsn(confirmed),
        "server_lsn": format_lsn(wal),
        "lag_bytes": lag,
        "lag": format_size(lag),
        "wal_status": slot.wal_status,
        "lag_guard": guard,
    }


@cdc_app.command("status")
def cdc_status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Each CDC source: its slot, confirmed position, lag, last commit, snapshot progress."""
    project, store = _open(ctx)
    rows: list[dict[str, Any]] = []
    for name, source in _cdc_sources(project, store):
        infos = list(store.commit_infos(name))
        position = source.recover(i.source_state for i in infos if i.source_state)
        status = source.status(position)
        rows.append(
            {
                "dataset": name,
                "tables": list(source.config.tables),
                "changes": status.consumed,
                **status.details,
                **_server_view(source, position),
            }
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no dataset reads a postgres_cdc source")
        return
    table = Table(title="postgres CDC", title_justify="left")
    for col in ("dataset", "slot", "read up to", "confirmed", "lag", "last commit", "snapshot"):
        table.add_column(col, overflow="fold")
    for r in rows:
        snapshot = ", ".join(
            f"{t}: {'done' if s['done'] else 'in progress'} ({s['rows']:,} rows)"
            for t, s in r["snapshot"].items()
        )
        if "server_error" in r:
            lag = f"[red]{escape(r['server_error'])}[/]"
        elif not r["slot_exists"]:
            lag = "[red]slot missing[/]"
        else:
            color = {"ok": "", "warn": "yellow", "stop": "red"}[r["lag_guard"]]
            seconds = "" if r["lag_seconds"] is None else f", {r['lag_seconds']:g}s"
            lag = f"{r['lag']}{seconds}"
            lag = f"[{color}]{lag}[/]" if color else lag
        table.add_row(
            r["dataset"],
            r["slot"],
            r["lsn"] or "",
            r.get("confirmed_lsn") or "",
            lag,
            (r["last_commit"] or "")[:19],
            escape(snapshot),
        )
    console.print(table)


@cdc_app.command("resnapshot")
def cdc_resnapshot(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="The dataset fed by the CDC source."),
    table: str = typer.Argument(..., help="The table to read again (schema.table)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run result as JSON."),
) -> None:
    """Read one table again, from a new snapshot, while the others keep streaming.

    The rows come as op 'r' records ordered after every change they contain; the run then
    catches up with the stream as usual.
    """
    from lakeforge.errors import ConfigError
    from lakeforge.execution.executor import Runner
    from lakeforge.sources.postgres_cdc import PostgresCdcSource

    project, _ = _open(ctx)
    ds = project.graph[dataset]  # an unknown name fails with a did-you-mean hint
    from lakeforge.sources.postgres_cdc_config import PostgresCdcConfig

    config = ds.config.source
    if not isinstance(config, PostgresCdcConfig):
        raise ConfigError(f"{dataset} does not read a postgres_cdc source", dataset=dataset)
    qualified = table if "." in table else f"public.{table}"
    source = PostgresCdcSource(dataset, project.root, config, resnapshot=[qualified])
    result = Runner(project).run(dataset, replay={dataset: source})
    task = result.tasks[0]
    summary = {
        "dataset": dataset,
        "table": qualified,
        "run_id": result.run_id,
        "status": task.status,
        "rows": task.rows_out,
        "error": str(task.error) if task.error else None,
    }
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"{dataset}: {qualified} re-snapshot {task.status} (run {result.run_id}, "
            f"{task.rows_out or 0:,} record(s) written)"
        )
        if task.error is not None:
            from lakeforge.cli.output import print_error

            print_error(task.error, debug=False)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(cdc_app, name="cdc")
