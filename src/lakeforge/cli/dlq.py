"""``lakeforge dlq``: the records sources could not read, per dataset."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from lakeforge.cli.output import arrow_records, arrow_table, console, print_json

dlq_app = typer.Typer(
    help="Dead-letter queues: records a source could not read (raw bytes, error, file, line).",
    no_args_is_help=True,
)


def _open(ctx: typer.Context) -> tuple[Any, Any]:
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import load_project
    from lakeforge.storage.delta import DeltaStore

    project = load_project(settings(ctx).project_dir)
    return project, DeltaStore(project.storage_root, project.config.storage_options)


@dlq_app.command("ls")
def dlq_ls(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Datasets with dead letters: how many, from how many files, the newest error."""
    from lakeforge.engines.duckdb import DuckDBEngine
    from lakeforge.sources.replay import pending_dead_letters
    from lakeforge.storage.write import dlq_table

    project, store = _open(ctx)
    rows = []
    for name in project.graph.order:
        table = dlq_table(name)
        if not store.exists(table):
            continue
        summary = (
            DuckDBEngine(project.root)
            .query(
                "SELECT count(*) AS records, count(DISTINCT source_file) AS files, "
                "max(_lf_rejected_at) AS newest, arg_max(error, _lf_rejected_at) AS newest_error "
                "FROM dlq",
                {"dlq": store.read(table)},
            )
            .to_pylist()[0]
        )
        to_replay = len(pending_dead_letters(store, name))
        rows.append({"dataset": name, "table": table, **summary, "to_replay": to_replay})
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no dead letters")
        return
    out = Table(title="dead-letter queues", title_justify="left")
    for col in ("dataset", "records", "to replay", "files", "newest", "newest error"):
        out.add_column(col, overflow="fold")
    for r in rows:
        out.add_row(
            r["dataset"],
            f"{r['records']:,}",
            f"{r['to_replay']:,}",
            f"{r['files']:,}",
            str(r["newest"] or ""),
            str(r["newest_error"] or ""),
        )
    console.print(out)


@dlq_app.command("show")
def dlq_show(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="The dataset whose dead letters to show."),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="Records to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The dead letters of a dataset, newest first, with their error and origin."""
    from lakeforge.engines.duckdb import DuckDBEngine
    from lakeforge.storage.write import dlq_table

    project, store = _open(ctx)
    project.graph[dataset]  # an unknown name fails with a did-you-mean hint
    table = dlq_table(dataset)
    if not store.exists(table):
        if as_json:
            print_json([])
        else:
            console.print(f"{dataset} has no dead letters")
        return
    import pyarrow as pa

    from lakeforge.sources.replay import dead_letter_id, replayed_ids

    done = replayed_ids(i.source_state for i in store.commit_infos(dataset) if i.source_state)
    data = DuckDBEngine(project.root).query(
        "SELECT source_file, line, error, raw_text, _lf_run_id AS run_id, _lf_batch AS batch, "
        "_lf_rejected_at AS rejected_at FROM dlq "
        "ORDER BY _lf_rejected_at DESC, source_file, line",
        {"dlq": store.read(table)},
        limit=limit,
    )
    marks = [
        dead_letter_id(b, f, n) in done
        for b, f, n in zip(
            data.column("batch").to_pylist(),
            data.column("source_file").to_pylist(),
            data.column("line").to_pylist(),
            strict=True,
        )
    ]
    data = data.append_column("replayed", pa.array(marks, pa.bool_()))
    if as_json:
        print_json(arrow_records(data))
        return
    console.print(arrow_table(data, title=f"{table} ({data.num_rows} shown)"))


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="The dataset whose dead letters to re-ingest."),
    as_json: bool = typer.Option(False, "--json", help="Print the run result as JSON."),
) -> None:
    """Re-ingest dead letters (e.g. after fixing the reader options), exactly once.

    Records that now read go through the dataset's transform, checks and write as one
    batch, whose commit marks them replayed; the others stay in the queue.
    """
    from lakeforge.execution.executor import Runner
    from lakeforge.sources.replay import replay_source

    project, store = _open(ctx)
    source = replay_source(project, store, dataset)
    if not source.letters:
        if as_json:
            print_json({"dataset": dataset, "replayed": 0, "still_unreadable": 0})
        else:
            console.print(f"{dataset}: no dead letters to replay")
        return
    result = Runner(project).run(dataset, replay={dataset: source})
    task = result.tasks[0]
    replayed = (
        int(task.metrics.get("source", {}).get("units", 0)) if task.status == "success" else 0
    )
    summary = {
        "dataset": dataset,
        "run_id": result.run_id,
        "status": task.status,
        "replayed": replayed,
        "still_unreadable": len(source.still_unreadable),
        "error": str(task.error) if task.error else None,
    }
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"{dataset}: {replayed} dead letter(s) replayed, "
            f"{len(source.still_unreadable)} still unreadable (run {result.run_id})"
        )
        if task.error is not None:
            from lakeforge.cli.output import print_error

            print_error(task.error, debug=False)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
