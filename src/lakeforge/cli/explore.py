"""Read commands: ``ls``, ``show``, ``history``, ``sql``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from lakeforge.cli.output import arrow_records, arrow_table, console, print_json
from lakeforge.errors import ConfigError

if TYPE_CHECKING:
    from lakeforge.graph.spec import Dataset
    from lakeforge.project.loader import Project
    from lakeforge.storage.delta import DeltaStore


def _open(ctx: typer.Context) -> tuple[Project, DeltaStore]:
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import load_project
    from lakeforge.storage.delta import DeltaStore

    project = load_project(settings(ctx).project_dir)
    return project, DeltaStore(project.storage_root, project.config.storage_options)


def _lookup(project: Project, name: str) -> Dataset | None:
    """The dataset called ``name``; None for the quarantine or dead-letter table of a dataset
    (stored, but not part of the graph). Unknown names fail with a did-you-mean hint."""
    from lakeforge.storage.write import DLQ_SUFFIX, LATE_SUFFIX, QUARANTINE_SUFFIX

    if name not in project.graph:
        for suffix in (QUARANTINE_SUFFIX, DLQ_SUFFIX, LATE_SUFFIX):
            base = name.removesuffix(suffix)
            if base != name and base in project.graph:
                return None
    return project.graph[name]


def ls(
    ctx: typer.Context,
    selection: list[str] | None = typer.Argument(None, help="Restrict to a selection."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List datasets: layer, kind, write strategy, version, rows, freshness of the build."""
    from rich.table import Table

    from lakeforge.execution.planner import plan
    from lakeforge.graph.selection import select
    from lakeforge.storage.write import dlq_table, late_table, quarantine_table

    project, store = _open(ctx)
    names = select(project.graph, selection)
    assessments = {a.dataset: a for a in plan(project.graph, store, project.root, names)}
    rows: list[dict[str, Any]] = []
    for name in names:
        ds = project.graph[name]
        a = assessments[name]
        state = a.state
        row: dict[str, Any] = {
            "name": name,
            "layer": ds.layer,
            "kind": ds.kind,
            "language": ds.language,
            "write": None if ds.is_view else ds.config.write.strategy,
            "owner": ds.config.owner,
            "tags": ds.config.tags,
            "version": state.version if state else None,
            "rows": None,
            "status": "view" if ds.is_view else ("up to date" if not a.stale else "stale"),
            "reason": None if ds.is_view or not a.stale else a.reason,
            "location": str(ds.location),
        }
        if state is not None:
            row["rows"] = store.open(name).count()
        rows.append(row)
        for side, kind, what in (
            (quarantine_table(name), "quarantine", "rows set aside by its expectations"),
            (dlq_table(name), "dlq", "records its source could not read"),
            (late_table(name), "late", "events that came after its watermark"),
        ):
            if ds.is_view or not store.exists(side):
                continue
            held = store.open(side)
            rows.append(
                {
                    "name": side,
                    "layer": ds.layer,
                    "kind": kind,
                    "language": None,
                    "write": kind,
                    "owner": ds.config.owner,
                    "tags": ds.config.tags,
                    "version": held.version(),
                    "rows": held.count(),
                    "status": f"{name}: {what}",
                    "reason": None,
                    "location": str(ds.location),
                }
            )
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{project.name}: {len(rows)} datasets", title_justify="left")
    for col in ("name", "layer", "kind", "write", "version", "rows", "status"):
        table.add_column(col, justify="right" if col in ("version", "rows") else "left")
    for r in rows:
        status = r["status"] if r["reason"] is None else f"[yellow]stale[/] [dim]({r['reason']})[/]"
        table.add_row(
            r["name"],
            r["layer"] or "",
            r["kind"],
            r["write"] or "",
            "" if r["version"] is None else f"v{r['version']}",
            "" if r["rows"] is None else f"{r['rows']:,}",
            status,
        )
    console.print(table)


def show(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="Dataset name."),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="Rows to show."),
    version: int | None = typer.Option(
        None, "--version", "-v", min=0, help="Time travel: a version."
    ),
    as_of: str | None = typer.Option(None, "--as-of", help="Time travel: an ISO timestamp."),
    where: str | None = typer.Option(None, "--where", help='SQL filter, e.g. "amount > 100".'),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show rows of a dataset, optionally at a past version or time."""
    from sqlglot import exp

    from lakeforge.engines.base import TransformContext
    from lakeforge.engines.duckdb import DuckDBEngine

    project, store = _open(ctx)
    ds = _lookup(project, dataset)
    if version is not None and as_of is not None:
        raise ConfigError("give either --version or --as-of, not both")
    pin: int | datetime | None = version
    if as_of is not None:
        pin = _parse_time(as_of)
    engine = DuckDBEngine(project.root)
    query = exp.select("*").from_(exp.to_identifier(dataset, quoted=True))
    if where:
        query = query.where(where, dialect="duckdb")
    if ds is not None and ds.is_view:
        if pin is not None:
            raise ConfigError(f"{dataset} is a view: time travel applies to tables")
        tables = {n: store.read(n) for n in project.graph.materialized_inputs(dataset)}
        views = [project.graph[v] for v in project.graph.views_needed(dataset)] + [ds]
        context = TransformContext(
            run_id="adhoc",
            dataset=dataset,
            started_at=datetime.now(UTC),
            vars=dict(project.config.vars),
        )
        data = engine.query(query.sql("duckdb"), tables, views, context, limit=limit)
        shown_version = "view"
    else:
        pinned = store.read(dataset, pin)
        data = engine.query(query.sql("duckdb"), {dataset: pinned}, limit=limit)
        shown_version = f"v{pinned.version}"
    if as_json:
        print_json({"dataset": dataset, "version": shown_version, "rows": arrow_records(data)})
        return
    console.print(
        arrow_table(data, title=f"{dataset} @ {shown_version} ({data.num_rows} rows shown)")
    )


def history(
    ctx: typer.Context,
    dataset: str | None = typer.Argument(
        None, help="A dataset: its Delta versions. None: recent runs."
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="Entries to show."),
    stream: str | None = typer.Option(
        None, "--stream", help="Without a dataset: the micro-batch runs of this stream."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a dataset's versions (with the run that wrote each), or recent runs."""
    from rich.table import Table

    project, store = _open(ctx)
    if dataset is None:
        from lakeforge.cli.runs import show_runs

        show_runs(project, limit, stream, as_json)
        return
    if stream is not None:
        raise typer.BadParameter("lists runs: give it without a dataset", param_hint="--stream")
    _lookup(project, dataset)
    entries = store.history(dataset, limit)
    rows: list[dict[str, Any]] = []
    for e in entries:
        meta = e.get("lakeforge") or {}
        metrics = e.get("operationMetrics") or {}
        rows.append(
            {
                "version": e.get("version"),
                "timestamp": datetime.fromtimestamp(e["timestamp"] / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                "operation": e.get("operation"),
                "run_id": meta.get("run_id"),
                "batch": meta.get("batch"),
                "fingerprint": meta.get("fingerprint"),
                "input_versions": meta.get("input_versions"),
                "rows_added": metrics.get(
                    "num_added_rows", metrics.get("num_target_rows_inserted")
                ),
                "metrics": metrics,
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{dataset}: history", title_justify="left")
    for col in ("version", "timestamp", "operation", "run", "inputs", "rows added"):
        table.add_column(col)
    for row in rows:
        inputs = ", ".join(f"{k}@v{v}" for k, v in (row["input_versions"] or {}).items())
        table.add_row(
            str(row["version"]),
            row["timestamp"],
            row["operation"] or "",
            row["run_id"] or "",
            inputs,
            "" if row["rows_added"] is None else str(row["rows_added"]),
        )
    console.print(table)


def sql(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="A SELECT over dataset names."),
    limit: int = typer.Option(1000, "--limit", "-n", min=0, help="Maximum rows printed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Run an ad-hoc query over the current version of every built dataset."""
    from lakeforge.engines.base import TransformContext
    from lakeforge.engines.duckdb import DuckDBEngine
    from lakeforge.sql.model import extract_references, parse_select

    project, store = _open(ctx)
    tree = parse_select(query, "<query>", 0, "query")
    refs, _ = extract_references(tree)
    graph = project.graph
    wanted = [r for r in refs if r in graph]
    tables: dict[str, Any] = {}
    views: list[Dataset] = []
    for name in refs:
        if name not in graph and store.exists(name) and _lookup(project, name) is None:
            tables[name] = store.read(name)  # a quarantine table
    for name in wanted:
        for base in [name] if not graph[name].is_view else graph.materialized_inputs(name):
            if base not in tables:
                tables[base] = store.read(base)
        if graph[name].is_view:
            views.extend(
                graph[v] for v in [*graph.views_needed(name), name] if graph[v] not in views
            )
    context = TransformContext(
        run_id="adhoc",
        dataset="query",
        started_at=datetime.now(UTC),
        vars=dict(project.config.vars),
    )
    data = DuckDBEngine(project.root).query(query, tables, views, context, limit=limit)
    if as_json:
        print_json(arrow_records(data))
        return
    console.print(arrow_table(data, title=f"{data.num_rows} rows"))


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"invalid timestamp {text!r}", hint="use ISO 8601, e.g. 2026-01-31T12:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command()(show)
    app.command()(history)
    app.command()(sql)
