"""``lakeforge schedule``: queue runs when schedules and sensors say so; ``schedule ls``."""

from __future__ import annotations

import signal
import threading
from datetime import datetime
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, err_console, print_json

if TYPE_CHECKING:
    from lakeforge.scheduling.scheduler import AutomationError, AutomationStatus, Enqueued

schedule_app = typer.Typer(invoke_without_command=True)


@schedule_app.callback(invoke_without_command=True)
def schedule(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Evaluate once, then exit."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Evaluate once and print what would be queued; write nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation as JSON."),
    interval: float = typer.Option(
        10.0, "--interval", min=0.1, help="Longest wait between evaluations (seconds)."
    ),
) -> None:
    """Queue runs on cron schedules and sensors (workers execute them).

    Evaluates every schedule and sensor every few seconds and queues the runs that are due,
    until stopped (Ctrl-C / SIGTERM end it after the current evaluation); `lakeforge worker`
    executes them. With --once / --dry-run: exit 1 when a schedule or sensor failed.
    """
    if ctx.invoked_subcommand is not None:
        return
    if as_json and not (once or dry_run):
        raise typer.BadParameter("--json needs --once or --dry-run", param_hint="--json")
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.scheduler import Scheduler

    project = load_project(settings(ctx).project_dir)
    scheduler = Scheduler(project)
    if not scheduler.schedules and not scheduler.sensors:
        err_console.print(
            "[yellow]no schedules or sensors:[/] add `schedules:` / `sensors:` to lakeforge.yml, "
            "`schedule:` / `on_upstream_change:` to a dataset, or an @lf.sensor function"
        )
    if once or dry_run:
        now = scheduler.clock()
        queued = scheduler.tick(now, dry_run=dry_run)
        if as_json:
            print_json(
                {
                    "now": now.isoformat(),
                    "dry_run": dry_run,
                    "enqueued": [q.to_dict() for q in queued],
                    "errors": [e.to_dict() for e in scheduler.errors],
                }
            )
        else:
            _print_tick(queued, scheduler.errors, dry_run=dry_run)
            if not queued:
                console.print("nothing due")
        if scheduler.errors:
            raise typer.Exit(1)
        return

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now
        err_console.print(f"{signal.Signals(signum).name}: stopping after this evaluation")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)
    err_console.print(
        f"scheduler: {len(scheduler.schedules)} schedule(s), {len(scheduler.sensors)} "
        f"sensor(s) → queue on {scheduler.metadata.url}"
    )
    queued_total = 0

    def report(queued: list[Enqueued], errors: list[AutomationError]) -> None:
        nonlocal queued_total
        queued_total += len(queued)
        _print_tick(queued, errors, dry_run=False)

    ticks = scheduler.run(stop, interval=interval, on_tick=report)
    err_console.print(f"scheduler stopped: {ticks} evaluation(s), {queued_total} run(s) queued")


def _print_tick(queued: list[Enqueued], errors: list[AutomationError], *, dry_run: bool) -> None:
    verb = "would queue" if dry_run else "queued"
    for q in queued:
        item = "" if q.item is None else f" item {q.item}"
        console.print(
            f"{verb}{item} [bold]{escape(' '.join(q.selection))}[/] "
            f"(priority {q.priority}, pool {escape(q.pool)}) [dim]{escape(q.reason)}[/]"
        )
    for e in errors:
        err_console.print(f"[bold red]error:[/] {e.kind} {escape(e.name)}: {escape(e.message)}")


@schedule_app.command("ls")
def schedule_ls(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Schedules and sensors: trigger, what they run, next fire, last fire, state."""
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.scheduler import Scheduler

    project = load_project(settings(ctx).project_dir)
    statuses = Scheduler(project).status()
    if as_json:
        print_json([s.to_dict() for s in statuses])
        return
    if not statuses:
        console.print("no schedules or sensors")
        return
    console.print(_status_table(statuses))


def _status_table(statuses: list[AutomationStatus]) -> Table:
    table = Table(title="schedules and sensors (times UTC)", title_justify="left")
    table.add_column("name", no_wrap=True, min_width=max(len(s.name) for s in statuses))
    for col in ("trigger", "runs (pool, prio)", "next", "last fired", "fired", "state"):
        table.add_column(col, overflow="fold")
    for s in statuses:
        what = " ".join(s.selection) or "(per request)"
        table.add_row(
            escape(s.name),
            escape(s.trigger),
            f"{escape(what)} [dim]({escape(s.pool)}, {s.priority})[/]",
            _when(s.next_at),
            _when(s.last_fired),
            str(s.fired),
            f"[red]error: {escape(s.error)}[/]" if s.error else escape(s.state),
        )
    return table


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%m-%d %H:%M")


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")
