"""``lakeforge stream``: run streaming tables continuously, on their triggers."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from lakeforge.cli.output import console, err_console, print_error

if TYPE_CHECKING:
    from rich.live import Live

    from lakeforge.execution.results import RunResult, TaskResult
    from lakeforge.streaming.loop import FlowProgress


def stream(
    ctx: typer.Context,
    selection: list[str] | None = typer.Argument(
        None, help="Streaming tables to run (selection syntax); default: all of them."
    ),
    max_micro_batches: int | None = typer.Option(
        None, "--max-micro-batches", min=1, help="Stop after N micro-batch runs."
    ),
    available_now: bool = typer.Option(
        False,
        "--available-now",
        help="Process what is available now in every flow, then stop (whatever the triggers).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON line per micro-batch of a flow, then the totals."
    ),
    http: str = typer.Option(
        "127.0.0.1:8765",
        "--http",
        metavar="HOST:PORT",
        help="Where POST /ingest/{dataset} listens, for tables with an http_push source.",
    ),
) -> None:
    """Run streaming tables continuously until stopped (Ctrl-C / SIGTERM: the batch in
    progress is committed first)."""
    import orjson

    from lakeforge.cli.app import settings
    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project
    from lakeforge.streaming.loop import StreamLoop

    opts = settings(ctx)
    project = load_project(opts.project_dir)
    runner = Runner(project)
    display = _Display(as_json, live=err_console.is_terminal)
    loop = StreamLoop(
        runner, selection, on_batch=display.on_batch, max_micro_batches=max_micro_batches
    )
    display.flows = list(loop.flows.values())
    if available_now:
        for flow in loop.flows.values():
            flow.trigger = "available_now"
    stop = threading.Event()
    signals = {"count": 0}

    def request_stop(signum: int, _frame: object) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        stop.set()
        err_console.print(
            f"[yellow]{signal.Signals(signum).name}: finishing the batch in progress "
            "(again to stop now)[/]"
        )

    server = _push_server(project, list(loop.flows), http)
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    if not as_json:
        shown = ", ".join(f"{f.dataset} ({f.trigger})" for f in loop.flows.values())
        err_console.print(f"streaming {escape(shown)} — Ctrl-C to stop")
    if server is not None:
        server.start()
        if not as_json:
            err_console.print(f"push endpoint: POST {server.address}/ingest/{{dataset}}")
    try:
        with display:
            flows = loop.run(stop)
    finally:
        if server is not None:
            from lakeforge.sources.http_push import buffer_of

            server.stop()  # no new requests; those still waiting are told to retry (503)
            for name in server.datasets:
                buffer_of(name).close("not stored: the stream stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [f for f in flows.values() if f.error is not None]
    if as_json:
        totals = {"stream": loop.stream_id, "flows": [f.to_dict() for f in flows.values()]}
        console.print(orjson.dumps(totals).decode(), soft_wrap=True, highlight=False)
    elif not display.was_live:  # the live table stays on the screen as the summary
        console.print(_summary(list(flows.values())))
        for flow in failed:
            err_console.print(f"[red]✗[/] {escape(flow.dataset)}: {escape(flow.error or '')}")
    if failed:
        raise typer.Exit(1)


def _push_server(project: Any, flows: list[str], address: str) -> Any:
    """The push endpoint, when a flow's source is http_push (else None)."""
    from lakeforge.sources.http_push import HttpPushConfig

    datasets = {
        name: project.graph[name].config.source
        for name in flows
        if isinstance(project.graph[name].config.source, HttpPushConfig)
    }
    if not datasets:
        return None
    from lakeforge.errors import ConfigError
    from lakeforge.streaming.push_server import PushServer

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--http {address!r}: give HOST:PORT, e.g. 127.0.0.1:8765")
    try:
        return PushServer(host, int(port), datasets)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {address}: {exc.strerror or exc}",
            hint="choose another port with --http HOST:PORT",
        ) from None


class _Display:
    """Shows each micro-batch of a flow as it ends: JSON lines (``--json``), a table of the
    flows refreshed in place (a terminal), or a line per micro-batch (a pipe, a log)."""

    def __init__(self, as_json: bool, live: bool) -> None:
        self.as_json = as_json
        self.flows: list[FlowProgress] = []
        self._live: Live | None = None
        self._wanted_live = live and not as_json
        self.was_live = False

    def __enter__(self) -> _Display:
        if self._wanted_live:
            from rich.live import Live

            self._live = Live(self.table(), console=err_console, refresh_per_second=2)
            self._live.start()
            self.was_live = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.stop()
            self._live = None

    def on_batch(self, flow: FlowProgress, task: TaskResult, result: RunResult) -> None:
        import orjson

        if self.as_json:
            line: dict[str, Any] = {"dataset": flow.dataset, **flow.last}
            console.print(orjson.dumps(line).decode(), soft_wrap=True, highlight=False)
            return
        if task.status == "failed":
            if task.error is not None:
                print_error(task.error, debug=False)  # above the live table, if any
        elif task.status == "success" and self._live is None:
            err_console.print(
                f"[green]✓[/] {escape(flow.dataset)}: " + ", ".join(_parts(flow.last))
            )
        if self._live is not None:
            self._live.update(self.table())

    def table(self) -> Table:
        """The flows: totals, and the last micro-batch's figures."""
        table = Table(title="lakeforge stream", title_justify="left")
        columns = (
            "flow",
            "trigger",
            "micro-batches",
            "rows in",
            "rows out",
            "rows/s",
            "input/s",
            "lag",
            "latency",
            "watermark",
            "state rows",
            "last",
            "status",
        )
        for column in columns:
            right = column not in ("flow", "trigger", "watermark", "last", "status")
            table.add_column(column, justify="right" if right else "left", no_wrap=True)
        for f in self.flows:
            last = f.last
            status = "[red]failing[/]" if f.error else ("done" if f.done else "[green]running[/]")
            table.add_row(
                escape(f.dataset),
                str(f.trigger),
                f"{f.micro_batches:,}",
                f"{f.rows_in:,}",
                f"{f.rows_out:,}",
                _number(last.get("processing_rate")),
                _number(last.get("input_rate")),
                _number(last.get("lag")),
                "" if last.get("latency") is None else f"{last['latency']:,.1f}s",
                str(last.get("watermark") or ""),
                _number(last.get("state_rows")),
                str(last.get("at", ""))[11:19],
                status,
            )  # fmt: skip
        return table


def _parts(last: dict[str, Any]) -> list[str]:
    """A micro-batch's figures, for its line."""
    parts = [
        f"{last['rows_in']:,} in",
        f"{last['rows_out']:,} out",
        f"{last['batches']} batch(es)",
        f"{last['seconds']:.2f}s",
    ]
    if last.get("processing_rate") is not None:
        parts.append(f"{last['processing_rate']:,.0f} rows/s")
    if last.get("input_rate") is not None:
        parts.append(f"input {last['input_rate']:,.0f} rows/s")
    if last.get("lag") is not None:
        parts.append(f"lag {_number(last['lag'])}")
    if last.get("watermark") is not None:
        parts.append(f"watermark {last['watermark']}")
    for key, word in (("rows_late", "late"), ("rows_deduplicated", "deduplicated")):
        if last.get(key):
            parts.append(f"{last[key]:,} {word}")
    if last.get("state_rows") is not None:
        parts.append(f"state {last['state_rows']:,} rows")
    if last.get("latency") is not None:
        parts.append(f"latency {last['latency']:,.1f}s")
    return parts


def _number(value: Any) -> str:
    """A count or rate for people; a lag by topic (Kafka) is shown as its total."""
    if isinstance(value, dict):
        value = sum(v for v in value.values() if isinstance(v, int | float))
    if value is None:
        return ""
    return f"{value:,.0f}"


def _summary(flows: list[FlowProgress]) -> Table:
    table = Table(title="stream")
    for column in ("flow", "trigger", "micro-batches", "batches", "rows in", "rows out", "status"):
        table.add_column(
            column, justify="right" if column.startswith(("micro", "rows", "bat")) else "left"
        )
    for f in flows:
        status = "[red]failing[/]" if f.error else ("done" if f.done else "stopped")
        table.add_row(
            escape(f.dataset),
            str(f.trigger),
            str(f.micro_batches),
            str(f.batches),
            f"{f.rows_in:,}",
            f"{f.rows_out:,}",
            status,
        )
    return table


def register(app: typer.Typer) -> None:
    app.command()(stream)
