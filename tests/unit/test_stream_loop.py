"""``lakeforge stream``: streaming tables run on their triggers, with a fake clock; a
graceful stop commits the batch in progress and leaves the rest for the next time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.errors import GraphError
from lakeforge.execution.executor import Runner
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore
from lakeforge.streaming.loop import IDLE_POLL, StreamLoop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_project(root: Path, trigger: str = "30s", per_batch: int = 100) -> Path:
    (root / "landing").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "lakeforge.yml").write_text("name: streaming\n")
    (root / "models" / "events.sql").write_text(
        textwrap.dedent(
            f"""
            /* lakeforge
            mode: streaming
            trigger: {trigger}
            source: {{path: "landing/*.ndjson", max_files_per_batch: {per_batch}}}
            */
            SELECT id, v FROM source
            """
        ).lstrip()
    )
    (root / "models" / "summary.sql").write_text("SELECT count(*) AS n FROM events\n")
    return root


def land(root: Path, name: str, *ids: int) -> None:
    body = "".join(json.dumps({"id": i, "v": f"v{i}"}) + "\n" for i in ids)
    (root / "landing" / name).write_text(body)
    stamp = time.time() + len(list((root / "landing").iterdir()))  # arrival order
    os.utime(root / "landing" / name, (stamp, stamp))


def ids(root: Path) -> list[int]:
    store = DeltaStore(str(root / "lakehouse"))
    if not store.exists("events"):
        return []
    return sorted(r["id"] for r in store.read("events").to_table().to_pylist())


def runs(root: Path) -> int:
    with MetadataStore(load_project(root).metadata_url) as metadata:
        return len(metadata.list_runs(limit=1000))


def test_a_flow_runs_on_its_trigger_and_only_when_there_is_something_new(
    tmp_path: Path,
) -> None:
    root = make_project(tmp_path)
    clock = Clock()
    seen: list[tuple[str, int]] = []
    loop = StreamLoop(
        Runner(load_project(root)),
        clock=clock,
        on_batch=lambda flow, task, result: seen.append((flow.dataset, flow.last["rows_in"])),
    )
    assert list(loop.flows) == ["events"]  # `summary` is a batch table: not streamed
    land(root, "a.ndjson", 1, 2)
    assert loop.tick() is not None
    assert ids(root) == [1, 2] and seen == [("events", 2)]
    land(root, "b.ndjson", 3)
    clock.now += 10
    assert loop.tick() is None  # not due before 30 s
    clock.now += 20
    assert loop.tick() is not None
    assert ids(root) == [1, 2, 3] and seen[-1] == ("events", 1)
    before = runs(root)
    clock.now += 30
    assert loop.tick() is None  # due, but nothing new: no run is recorded
    assert runs(root) == before
    flow = loop.flows["events"]
    assert (flow.micro_batches, flow.rows_in, flow.rows_out, flow.error) == (2, 3, 3, None)
    with MetadataStore(load_project(root).metadata_url) as metadata:
        latest = metadata.list_runs(limit=1)[0]
        assert latest.options["stream"] == loop.stream_id


def test_an_interval_trigger_keeps_a_fixed_rate_whatever_a_micro_batch_takes(
    tmp_path: Path,
) -> None:
    """As a processing-time trigger: due every interval from when the last micro-batch was
    due, not an interval after it ended; at once when it took longer than the interval."""
    root = make_project(tmp_path, trigger="1s")
    clock = Clock()
    runner = Runner(load_project(root))
    original = runner.run

    def slow_run(*args: Any, **kwargs: Any) -> Any:
        clock.now += seconds  # the micro-batch takes `seconds` on the loop's clock
        return original(*args, **kwargs)

    runner.run = slow_run  # type: ignore[method-assign]
    loop = StreamLoop(runner, clock=clock)
    start = clock.now
    seconds = 0.4
    land(root, "a.ndjson", 1)
    assert loop.tick() is not None
    assert loop.flows["events"].next_due == start + 1.0
    clock.now = start + 1.0
    seconds = 2.5
    land(root, "b.ndjson", 2)
    assert loop.tick() is not None
    assert loop.flows["events"].next_due == clock.now  # late already: again at once
    assert ids(root) == [1, 2]


def test_available_now_processes_everything_then_stops(tmp_path: Path) -> None:
    root = make_project(tmp_path, trigger="available_now", per_batch=1)
    for i in range(3):
        land(root, f"{i}.ndjson", i)
    loop = StreamLoop(Runner(load_project(root)))
    flows = loop.run(threading.Event())
    assert flows["events"].done and flows["events"].batches == 3
    assert ids(root) == [0, 1, 2]


def test_a_zero_trigger_polls_again_soon_when_idle(tmp_path: Path) -> None:
    root = make_project(tmp_path, trigger="0s")
    clock = Clock()
    loop = StreamLoop(Runner(load_project(root)), clock=clock)
    land(root, "a.ndjson", 1)
    loop.tick()
    assert loop.flows["events"].next_due == clock.now  # again at once after new data
    loop.tick()
    assert loop.flows["events"].next_due == clock.now + IDLE_POLL


def test_a_stop_ends_the_micro_batch_after_the_batch_in_progress(tmp_path: Path) -> None:
    root = make_project(tmp_path, per_batch=1)
    for i in range(4):
        land(root, f"{i}.ndjson", i)
    stop = threading.Event()
    loop = StreamLoop(Runner(load_project(root)), on_batch=lambda *a: None, clock=Clock())
    original = loop.runner.run

    def run_and_stop(*args: object, **kw: object) -> object:
        # Asked after each committed batch: the first answer stops it.
        kw["stop"] = lambda: True
        return original(*args, **kw)  # type: ignore[arg-type]

    loop.runner.run = run_and_stop  # type: ignore[method-assign]
    result = loop.tick(stop)
    assert result is not None
    task = result.tasks[0]
    assert task.status == "success" and "stopped after this batch" in task.reason
    assert ids(root) == [0]
    loop.runner.run = original  # type: ignore[method-assign]
    loop.flows["events"].next_due = 0
    loop.tick(stop)
    assert ids(root) == [0, 1, 2, 3]  # the rest, next time, once


def test_a_failing_flow_backs_off_and_recovers(tmp_path: Path) -> None:
    root = make_project(tmp_path, trigger="1s")
    (root / "models" / "events.sql").write_text(
        (root / "models" / "events.sql").read_text().replace("SELECT id, v", "SELECT id, nope")
    )
    clock = Clock()
    loop = StreamLoop(Runner(load_project(root)), clock=clock)
    land(root, "a.ndjson", 1)
    loop.tick()
    flow = loop.flows["events"]
    assert flow.failures == 1 and "nope" in (flow.error or "")
    loop.flows["events"].next_due = clock.now  # the backoff grows while it fails
    loop.tick()
    assert flow.failures == 2 and flow.next_due == clock.now + 2.0


def test_no_streaming_table_is_an_error(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    with pytest.raises(GraphError, match="has no streaming table"):
        StreamLoop(Runner(load_project(root)), "summary")


def test_cli_available_now_json(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    land(root, "a.ndjson", 1, 2, 3)
    result = CliRunner().invoke(app, ["-C", str(root), "stream", "--available-now", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines[0]["dataset"] == "events" and lines[0]["rows_in"] == 3
    totals = lines[-1]
    assert totals["flows"][0]["rows_out"] == 3 and totals["flows"][0]["done"]


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_cli_shows_a_live_table_in_a_terminal_and_lines_in_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    import io

    from rich.console import Console

    from lakeforge.cli import stream as stream_cli

    screen = Console(file=io.StringIO(), force_terminal=terminal, width=220, record=True)
    monkeypatch.setattr(stream_cli, "err_console", screen)
    root = make_project(tmp_path)
    land(root, "a.ndjson", 1, 2, 3)
    result = CliRunner().invoke(app, ["-C", str(root), "stream", "--available-now"])
    assert result.exit_code == 0, result.output
    shown = screen.export_text()
    if terminal:  # one table, refreshed in place, left on the screen at the end
        assert "lakeforge stream" in shown and "✓ events" not in shown
        row = next(line for line in shown.splitlines() if line.startswith("│ events"))
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[:5] == ["events", "available_now", "1", "3", "3"]
        assert cells[-1] == "done"
    else:  # a line per micro-batch, then the summary table on stdout
        assert "✓ events: 3 in, 3 out, 1 batch(es)" in shown
        assert "events" in result.stdout and "done" in result.stdout


@pytest.mark.slow
def test_sigterm_stops_a_running_stream_gracefully(tmp_path: Path) -> None:
    root = make_project(tmp_path, trigger="0.2s")
    land(root, "a.ndjson", 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakeforge", "-C", str(root), "stream", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while ids(root) != [1]:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the stream did not ingest the first file"
            time.sleep(0.05)
        land(root, "b.ndjson", 2)
        while ids(root) != [1, 2]:
            assert time.monotonic() < deadline, "the stream did not pick up the new file"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    totals = json.loads(out.strip().splitlines()[-1])
    assert totals["flows"][0]["rows_in"] == 2


def test_small_files_are_compacted_in_the_background_without_changing_data(
    tmp_path: Path,
) -> None:
    root = make_project(tmp_path, trigger="available_now", per_batch=1)
    header = (root / "models" / "events.sql").read_text()
    (root / "models" / "events.sql").write_text(
        header.replace(
            "trigger: available_now", "trigger: available_now\ncompaction: {min_files: 4}"
        )
    )
    for i in range(6):
        land(root, f"{i}.ndjson", i)
    store = DeltaStore(str(root / "lakehouse"))
    runner = Runner(load_project(root))
    flows = StreamLoop(runner).run(threading.Event())
    stats = flows["events"].compaction
    assert stats["runs"] == 1 and stats["files_removed"] >= 6 and stats["conflicts"] == 0
    files = store.open("events").get_add_actions(flatten=True).num_rows
    assert files == 1  # six one-file micro-batches, compacted
    assert ids(root) == [0, 1, 2, 3, 4, 5]
    # A maintenance commit: nothing is stale, nothing is read again.
    assert [a.stale for a in runner.plan(["events"])] == [False]
    land(root, "6.ndjson", 6)
    again = StreamLoop(Runner(load_project(root))).run(threading.Event())
    assert again["events"].rows_in == 1 and ids(root) == [0, 1, 2, 3, 4, 5, 6]
    assert again["events"].compaction["runs"] == 0  # two files: below min_files


def test_compaction_can_be_turned_off(tmp_path: Path) -> None:
    root = make_project(tmp_path, trigger="available_now", per_batch=1)
    header = (root / "models" / "events.sql").read_text()
    (root / "models" / "events.sql").write_text(
        header.replace("trigger: available_now", "trigger: available_now\ncompaction: false")
    )
    for i in range(5):
        land(root, f"{i}.ndjson", i)
    flows = StreamLoop(Runner(load_project(root))).run(threading.Event())
    assert flows["events"].compaction == {}
    table = DeltaStore(str(root / "lakehouse")).open("events")
    assert table.get_add_actions(flatten=True).num_rows == 5
