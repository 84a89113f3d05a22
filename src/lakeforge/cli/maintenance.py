"""``lakeforge optimize`` and ``lakeforge vacuum``."""

from __future__ import annotations

import typer

from lakeforge.cli.output import console, print_json
from lakeforge.errors import ConfigError


def optimize(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="Dataset name."),
    zorder: str | None = typer.Option(
        None, "--zorder", help="Comma-separated columns (default: cluster_by)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Compact small files; Z-order by columns to speed up selective reads."""
    from lakeforge.cli.explore import _open
    from lakeforge.storage.maintenance import optimize as run_optimize

    project, store = _open(ctx)
    ds = project.graph[dataset]
    columns = (
        [c.strip() for c in zorder.split(",") if c.strip()]
        if zorder
        else list(ds.config.cluster_by)
    )
    with console.status(f"optimizing {dataset}…"):
        result = run_optimize(store, dataset, zorder=columns or None)
    if as_json:
        print_json(vars(result))
        return
    how = f"Z-ordered by {', '.join(result.zorder)}" if result.zorder else "compacted"
    console.print(
        f"{dataset} {how}: {result.files_removed} files → {result.files_added}, "
        f"now v{result.version}"
    )


def vacuum(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="Dataset name."),
    retain: str = typer.Option(
        "168h", "--retain", help="Keep files needed by versions this recent."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List files without deleting."),
    allow_short_retention: bool = typer.Option(
        False, "--allow-short-retention", help="Permit retention under 168h."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Delete data files no longer referenced by versions inside the retention window."""
    from lakeforge.cli.explore import _open
    from lakeforge.project.durations import parse_duration
    from lakeforge.storage.maintenance import vacuum as run_vacuum

    project, store = _open(ctx)
    project.graph[dataset]
    try:
        period = parse_duration(retain)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    files = run_vacuum(
        store, dataset, retain=period, dry_run=dry_run, allow_short_retention=allow_short_retention
    )
    if as_json:
        print_json({"dataset": dataset, "dry_run": dry_run, "files": files})
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{dataset}: {verb} {len(files)} file(s) older than {retain}")


def register(app: typer.Typer) -> None:
    app.command()(optimize)
    app.command()(vacuum)
