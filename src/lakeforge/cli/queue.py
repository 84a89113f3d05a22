"""``lakeforge worker`` and ``lakeforge queue ls|add|cancel``."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, err_console, print_json

if TYPE_CHECKING:
    from lakeforge.execution.results import RunResult
    from lakeforge.scheduling.queue import QueueItem

queue_app = typer.Typer(help="The run queue that workers take runs from.", no_args_is_help=True)


def worker(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Stop when the queue is empty."),
    max_items: int | None = typer.Option(None, "--max-items", min=1, help="Stop after N runs."),
    pool: list[str] | None = typer.Option(None, "--pool", help="Take items of these pools only."),
    name: str | None = typer.Option(None, "--name", help="Worker name (default host:pid:id)."),
    poll: float = typer.Option(1.0, "--poll", min=0.05, help="Seconds between queue polls."),
) -> None:
    """Take runs from the queue and execute them until stopped (Ctrl-C / SIGTERM finish the
    current run first). Several workers may share a PostgreSQL metadata store."""
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.worker import Worker

    project = load_project(settings(ctx).project_dir)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now
        err_console.print(
            f"{signal.Signals(signum).name}: finishing the current run, then stopping"
        )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)

    def report(item: QueueItem, result: RunResult | None) -> None:
        status = "[green]done[/]" if result is not None and result.ok else "[red]failed[/]"
        run = f" run {result.run_id}" if result is not None else ""
        console.print(f"item {item.id} {status}{run} [dim]{escape(item.reason or '')}[/]")

    w = Worker(project, name=name, only_pools=pool, poll_seconds=poll, on_item=report)
    err_console.print(f"worker {w.name} on {w.metadata.url}")
    stats = w.run(stop, max_items=max_items, once=once)
    err_console.print(f"worker {w.name}: {stats.done} done, {stats.failed} failed")


@queue_app.command("ls")
def queue_ls(
    ctx: typer.Context,
    status: list[str] | None = typer.Option(None, "--status", help="Only these statuses."),
    limit: int = typer.Option(50, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Queued, running and recent items."""
    from lakeforge.cli.app import settings
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.queue import RunQueue

    project = load_project(settings(ctx).project_dir)
    items = RunQueue(MetadataStore(project.metadata_url)).items(status, limit)
    if as_json:
        print_json([i.to_dict() for i in items])
        return
    table = Table(title="queue", title_justify="left")
    for col in ("id", "status", "priority", "pool", "what", "reason", "worker", "run"):
        table.add_column(col)
    for i in items:
        what = " ".join(i.selection) if i.selection else "everything"
        if i.backfill:
            what += f" (backfill {sum(len(v) for v in i.backfill.values())} partition(s))"
        table.add_row(
            str(i.id), i.status, str(i.priority), i.pool, escape(what), escape(i.reason or ""),
            escape(i.claimed_by or ""), i.run_id or "",
        )  # fmt: skip
    console.print(table)


@queue_app.command("add")
def queue_add(
    ctx: typer.Context,
    selection: list[str] | None = typer.Argument(None, help="What to run (default everything)."),
    priority: int = typer.Option(0, "--priority", help="Higher runs first."),
    pool: str | None = typer.Option(
        None,
        "--pool",
        help="Concurrency pool (default: the first `tag:<t>` pool of lakeforge.yml whose tag a "
        "selected dataset has, else `default`).",
    ),
    reason: str = typer.Option("queued by hand", "--reason"),
    full_refresh: bool = typer.Option(False, "--full-refresh"),
) -> None:
    """Queue a run for the workers."""
    from lakeforge.cli.app import settings
    from lakeforge.graph.selection import select
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.queue import RunQueue, route_pool

    project = load_project(settings(ctx).project_dir)
    names = select(project.graph, selection)  # a bad selection fails now, not in a worker
    chosen = route_pool(project.graph, names, project.config.pools, pool)
    item = RunQueue(MetadataStore(project.metadata_url)).enqueue(
        selection=selection or None, priority=priority, pool=chosen, reason=reason,
        full_refresh=full_refresh,
    )  # fmt: skip
    console.print(f"queued item {item} (pool {escape(chosen)})")


@queue_app.command("cancel")
def queue_cancel(ctx: typer.Context, item: int = typer.Argument(..., help="Item id.")) -> None:
    """Cancel a queued item (a running one finishes)."""
    from lakeforge.cli.app import settings
    from lakeforge.errors import LakeforgeError
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.queue import RunQueue

    project = load_project(settings(ctx).project_dir)
    queue = RunQueue(MetadataStore(project.metadata_url))
    if not queue.cancel(item):
        raise LakeforgeError(f"queue item {item} is not queued", hint="`lakeforge queue ls`")
    console.print(f"cancelled item {item}")


def register(app: typer.Typer) -> None:
    app.command()(worker)
    app.add_typer(queue_app, name="queue")
