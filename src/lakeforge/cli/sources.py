"""``lakeforge sources``: each source's position (files ingested, pending, changed)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, print_json


def sources(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the datasets fed by a source, and what each has read and has still to read."""
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import load_project
    from lakeforge.sources import source_of
    from lakeforge.storage.delta import DeltaStore

    project = load_project(settings(ctx).project_dir)
    store = DeltaStore(project.storage_root, project.config.storage_options)
    rows: list[dict[str, Any]] = []
    for name in project.graph.order:
        ds = project.graph[name]
        source = source_of(ds, project.root)
        if source is None:
            continue
        infos = list(store.commit_infos(name))
        position = source.recover(i.source_state for i in infos if i.source_state)
        status = source.status(position)
        last = next((i for i in infos if i.source_state), None)
        rows.append(
            {
                "dataset": name,
                "kind": status.kind,
                "target": status.target,
                "consumed": status.consumed,
                "pending": status.pending,
                "last_batch": last.batch if last else None,
                "last_run": last.run_id if last else None,
                **status.details,
            }
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no dataset declares a source")
        return
    table = Table(title="sources", title_justify="left")
    for col in ("dataset", "kind", "reads", "done", "pending", "last batch", "notes"):
        table.add_column(col, justify="right" if col in ("done", "pending") else "left")
    for r in rows:
        changed = r.get("changed_files") or []
        notes = f"[yellow]{len(changed)} changed file(s) not re-read[/]" if changed else ""
        if r.get("reconciled_at"):
            notes = f"reconciled {r['reconciled_at'][:19]}, {r['deleted_keys']:,} deleted key(s)"
        if r.get("error"):  # a broker that could not be asked: pending is unknown
            notes = f"[red]{escape(str(r['error']))}[/]"
        table.add_row(
            r["dataset"],
            r["kind"],
            escape(r["target"]),
            f"{r['consumed']:,}",
            f"{r['pending']:,}",
            "" if r["last_batch"] is None else f"#{r['last_batch']} ({r['last_run']})",
            notes,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(sources)
