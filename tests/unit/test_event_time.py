"""Event time on streaming tables: late data, dedup, watermarks, tumbling / hopping / session
windows in append and update mode, the state store, recovery and crashes — compared with a
plain-Python model of the semantics (``event_time_reference.py``) on real Delta tables."""

from __future__ import annotations

import json
import os
import random
import shutil
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from event_time_reference import BASE, Event, Outcome, Spec, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakeforge.errors import ConfigError
from lakeforge.execution.executor import Runner
from lakeforge.graph.fingerprint import definition_payload
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore
from lakeforge.streaming.loop import StreamLoop

WINDOWS = {
    "tumbling": "{tumbling: 1m, by: [device]}",
    "hopping": "{hopping: {size: 1m, slide: 20s}, by: [device]}",
    "session": "{session: {gap: 30s}, by: [device]}",
}
AGGREGATE = (
    "SELECT device, window_start, window_end, count(*) AS n, round(avg(temp), 6) AS avg_temp "
    "FROM source GROUP BY ALL"
)


def make_project(root: Path, spec: Spec, sql: str | None = None, extra: str = "") -> Path:
    (root / "landing").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "lakeforge.yml").write_text("name: event_time\n")
    lines = [
        "mode: streaming",
        'source: {path: "landing/*.ndjson", max_files_per_batch: 1, row_column: true}',
        "event_time: ts",
        f"allowed_lateness: {spec.lateness}s",
    ]
    if spec.kind is not None:
        lines.append(f"window: {WINDOWS[spec.kind]}")
    if spec.mode != "append":
        lines.append(f"output_mode: {spec.mode}")
    if spec.within is not None:
        lines.append(f"dedup: {{key: id, within: {spec.within}s}}")
    if extra:
        lines.append(extra)
    query = sql or (AGGREGATE if spec.kind else "SELECT id, device, ts, temp FROM source")
    header = "\n".join(lines)
    (root / "models" / "agg.sql").write_text(f"/* lakeforge\n{header}\n*/\n{query}\n")
    return root


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def land(root: Path, index: int, events: list[Event], bad: list[str] | None = None) -> None:
    """One NDJSON file per micro-batch, arriving in order (modification times)."""
    lines = [
        json.dumps({"id": e.id, "device": e.device, "ts": iso(e.ts), "temp": e.temp})
        for e in events
    ]
    lines += [
        json.dumps({"id": -1, "device": "z", "ts": value, "temp": 0.0}) for value in bad or []
    ]
    path = root / "landing" / f"{index:04d}.ndjson"
    path.write_text("\n".join(lines) + "\n")
    stamp = time.time() - 10_000 + index
    os.utime(path, (stamp, stamp))


def stream_batches(seed: int, files: int = 6, per_file: int = 8) -> list[list[Event]]:
    """Event times that advance file by file, jittered back and forth (some events within
    the lateness, some beyond it), with duplicated ids (re-sent events)."""
    rng = random.Random(seed)
    batches: list[list[Event]] = []
    next_id = 0
    sent: list[Event] = []
    for f in range(files):
        batch = []
        for _ in range(per_file):
            ts = BASE + f * 45 + rng.randint(-70, 40)
            event = Event(next_id, rng.choice("abc"), ts, float(rng.randint(0, 40)))
            next_id += 1
            batch.append(event)
        for _ in range(2):  # re-sends of earlier events (same id and time)
            if sent and rng.random() < 0.7:
                batch.insert(rng.randrange(len(batch) + 1), rng.choice(sent))
        rng.shuffle(batch)
        sent.extend(batch)
        batches.append(batch)
    return batches


def table_windows(root: Path) -> dict[tuple[str, int, int], tuple[int, float]]:
    rows = DeltaStore(str(root / "lakehouse")).read("agg").to_table().to_pylist()
    out = {}
    for r in rows:
        key = (r["device"], int(r["window_start"].timestamp()), int(r["window_end"].timestamp()))
        assert key not in out, f"window {key} written twice"
        out[key] = (r["n"], round(r["avg_temp"], 6))
    return out


def side_ids(root: Path, name: str) -> list[int]:
    store = DeltaStore(str(root / "lakehouse"))
    if not store.exists(name):
        return []
    return sorted(r["id"] for r in store.read(name).to_table().to_pylist())


def build(root: Path, **runner: Any) -> Any:
    result = Runner(load_project(root), **runner).run()
    (task,) = result.tasks
    assert task.status in ("success", "up_to_date"), task.error
    return task


def stream_state(root: Path) -> dict[str, Any]:
    store = DeltaStore(str(root / "lakehouse"))
    info = next(store.commit_infos("agg"))
    assert info.source_state is not None
    return dict(info.source_state["stream"])


CASES = [
    Spec("tumbling", lateness=20, within=600),
    Spec("tumbling", lateness=20, mode="update", within=600),
    Spec("hopping", lateness=15, within=600),
    Spec("hopping", lateness=15, mode="update"),
    Spec("session", lateness=60, within=600),
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.kind}-{s.mode}-{s.within}")
def test_windows_match_the_reference(tmp_path: Path, spec: Spec) -> None:
    batches = stream_batches(seed=7)
    expected = run(spec, batches)
    assert expected.late and expected.windows  # the data exercises late events
    if spec.within is not None:
        assert expected.deduplicated
    root = make_project(tmp_path, spec)
    for i, batch in enumerate(batches):
        land(root, i, batch)
    task = build(root)
    assert task.metrics["source"]["batches"] == len(batches)
    assert table_windows(root) == expected.windows
    assert side_ids(root, "agg__late") == sorted(expected.late)
    assert task.metrics["rows_late"] == len(expected.late)
    assert task.metrics["rows_deduplicated"] == len(expected.deduplicated)
    # Nothing disappears: every record read is an event in a window, late or a duplicate.
    events = sum(len(b) for b in batches) - len(expected.late) - len(expected.deduplicated)
    assert task.metrics["rows_events"] == events
    assert task.rows_in == events + task.metrics["rows_late"] + task.metrics["rows_deduplicated"]
    state = stream_state(root)
    assert state["watermark"] == iso(expected.watermark or 0).replace("Z", "+00:00")
    # The state holds what the open windows need and the dedup keys in bound, no more.
    assert state["events"] == expected.open_events
    assert state["rows"] - state["events"] == expected.keys
    assert task.metrics["stream"]["state_rows"] == state["rows"]


def test_late_events_go_to_the_late_table_with_the_reason(tmp_path: Path) -> None:
    spec = Spec("tumbling", lateness=10)
    root = make_project(tmp_path, spec)
    land(root, 0, [Event(1, "a", BASE + 300, 1.0)])  # watermark 12:04:50
    # 12:03:59 is in [12:03, 12:04), closed; 12:04:30 is before the watermark but its window
    # [12:04, 12:05) is open: it still counts.
    land(root, 1, [Event(2, "a", BASE + 239, 2.0), Event(3, "a", BASE + 270, 3.0)])
    land(root, 2, [Event(4, "a", BASE + 400, 4.0)])  # watermark 12:06:30
    build(root)
    late = DeltaStore(str(root / "lakehouse")).read("agg__late").to_table().to_pylist()
    assert [r["id"] for r in late] == [2]
    assert late[0]["_lf_late_reason"] == (
        "event time 2024-01-01 12:03:59 is late: its window ended at 2024-01-01 12:04:00, at "
        "or before the watermark 2024-01-01 12:04:50"
    )
    assert late[0]["_lf_watermark"] == datetime(2024, 1, 1, 12, 4, 50, tzinfo=UTC)
    assert late[0]["_lf_batch"] == 2 and late[0]["_source_row"] == 1
    assert table_windows(root) == {
        ("a", BASE + 240, BASE + 300): (1, 3.0),
        ("a", BASE + 300, BASE + 360): (1, 1.0),
    }


def test_update_mode_corrects_an_open_window_with_a_late_event(tmp_path: Path) -> None:
    spec = Spec("tumbling", lateness=30, mode="update")
    root = make_project(tmp_path, spec)
    land(root, 0, [Event(1, "a", BASE + 10, 10.0), Event(2, "a", BASE + 70, 0.0)])
    build(root)
    assert table_windows(root)[("a", BASE, BASE + 60)] == (1, 10.0)  # open: written, updated
    land(root, 1, [Event(3, "a", BASE + 50, 20.0)])  # before the newest, within lateness
    build(root)
    assert table_windows(root)[("a", BASE, BASE + 60)] == (2, 15.0)
    land(root, 2, [Event(4, "a", BASE + 200, 0.0), Event(5, "a", BASE + 5, 99.0)])
    build(root)
    # 12:00:05 came when the watermark was 12:00:40: its window [12:00, 12:01) stays open.
    assert table_windows(root)[("a", BASE, BASE + 60)] == (3, 43.0)
    land(root, 3, [Event(6, "a", BASE + 1, 1.0)])  # watermark 12:02:50: now it is closed
    build(root)
    assert table_windows(root)[("a", BASE, BASE + 60)] == (3, 43.0)
    assert side_ids(root, "agg__late") == [6]


def test_without_a_window_events_pass_through_with_late_routing_and_dedup(
    tmp_path: Path,
) -> None:
    spec = Spec(None, lateness=5, within=60)
    root = make_project(tmp_path, spec)
    batches = stream_batches(seed=3, files=4)
    expected = run(spec, batches)
    for i, batch in enumerate(batches):
        land(root, i, batch)
    task = build(root)
    rows = DeltaStore(str(root / "lakehouse")).read("agg").to_table()
    assert sorted(rows.column("id").to_pylist()) == sorted(expected.passed)
    assert rows.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert side_ids(root, "agg__late") == sorted(expected.late)
    assert task.metrics["rows_deduplicated"] == len(expected.deduplicated)
    assert stream_state(root)["rows"] == expected.keys  # only dedup keys are kept


def test_a_record_without_a_valid_event_time_is_a_dead_letter(tmp_path: Path) -> None:
    root = make_project(tmp_path, Spec("tumbling", lateness=0))
    land(root, 0, [Event(1, "a", BASE, 1.0)], bad=["yesterday", "2024-01-01T13:00:00+02:00"])
    task = build(root)
    dead = DeltaStore(str(root / "lakehouse")).read("agg__dlq").to_table().to_pylist()
    assert [(d["error"], d["source_file"], d["line"]) for d in dead] == [
        ("event time ts 'yesterday' is not a timestamp", "landing/0000.ndjson", 2)
    ]
    assert json.loads(dead[0]["raw_text"])["ts"] == "yesterday"
    assert task.metrics["rows_dlq"] == 1
    # The offset is applied: 13:00+02:00 is 11:00 UTC, the newest event: the watermark.
    assert stream_state(root)["watermark"] == "2024-01-01T12:00:00+00:00"


def test_state_stays_bounded_and_old_snapshots_are_deleted(tmp_path: Path) -> None:
    spec = Spec("tumbling", lateness=10, within=120)
    root = make_project(tmp_path, spec)
    batches = [
        [Event(f * 10 + i, "abc"[i % 3], BASE + f * 60 + i * 5, 1.0) for i in range(10)]
        for f in range(12)
    ]
    for i, batch in enumerate(batches):
        land(root, i, batch)
    build(root)
    expected = run(spec, batches)
    state = stream_state(root)
    assert state["events"] == expected.open_events <= 10  # about one window's events
    assert state["rows"] - state["events"] == expected.keys <= 30
    folder = root / "lakehouse" / "_lf_state" / "agg"
    assert [p.name for p in folder.iterdir()] == [Path(state["state"]).name]
    assert len(table_windows(root)) == len(expected.windows) == 11 * 3


def copy_landing(src: Path, dst: Path, upto: int | None = None) -> None:
    for path in sorted((src / "landing").iterdir())[:upto]:
        shutil.copy2(path, dst / "landing" / path.name)


def test_a_restart_mid_stream_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    spec = Spec("hopping", lateness=15, mode="update", within=300)
    batches = stream_batches(seed=11, files=8)
    whole = make_project(tmp_path / "whole", spec)
    for i, batch in enumerate(batches):
        land(whole, i, batch)
    build(whole)
    parts = make_project(tmp_path / "parts", spec)
    for stop in (3, 5, 8):  # a new project load and Runner each time: nothing kept in memory
        copy_landing(whole, parts, stop)
        build(parts)
    assert table_windows(parts) == table_windows(whole) == run(spec, batches).windows
    assert side_ids(parts, "agg__late") == side_ids(whole, "agg__late")
    assert stream_state(parts)["rows"] == stream_state(whole)["rows"]


def test_a_crash_between_the_state_snapshot_and_the_commit_counts_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lakeforge.execution.executor as executor

    spec = Spec("tumbling", lateness=20, within=600)
    batches = stream_batches(seed=5)
    root = make_project(tmp_path, spec)
    for i, batch in enumerate(batches):
        land(root, i, batch)
    original = executor.write_dataset
    crashed: list[int] = []

    def write_or_crash(store: Any, ds: Any, data: Any, info: Any, **kw: Any) -> Any:
        if info.batch == 4 and not crashed:
            crashed.append(info.batch)
            raise RuntimeError("killed between the state snapshot and the commit")
        return original(store, ds, data, info, **kw)

    monkeypatch.setattr(executor, "write_dataset", write_or_crash)
    result = Runner(load_project(root)).run()
    assert result.tasks[0].status == "failed" and crashed == [4]
    store = DeltaStore(str(root / "lakehouse"))
    assert store.committed_batch("agg") == 3
    snapshots = sorted(p.name for p in (root / "lakehouse" / "_lf_state" / "agg").iterdir())
    assert snapshots == ["000000000003.parquet", "000000000004.parquet"]  # 4: not committed
    monkeypatch.setattr(executor, "write_dataset", original)
    build(root)
    expected = run(spec, batches)
    assert table_windows(root) == expected.windows
    assert side_ids(root, "agg__late") == sorted(expected.late)  # batch 4's late rows once
    assert stream_state(root)["events"] == expected.open_events


def test_idle_timeout_lets_processing_time_close_the_last_windows(tmp_path: Path) -> None:
    spec = Spec("tumbling", lateness=30)
    root = make_project(tmp_path, spec, extra="idle_timeout: 1m")
    now = {"at": datetime(2026, 1, 1, 8, 0, tzinfo=UTC)}
    clock = lambda: now["at"]  # noqa: E731
    land(root, 0, [Event(1, "a", BASE + 10, 1.0), Event(2, "b", BASE + 65, 2.0)])
    build(root, clock=clock)
    assert table_windows(root) == {}  # watermark 12:00:35: nothing closed
    runner = Runner(load_project(root), clock=clock)
    now["at"] += timedelta(seconds=50)
    assert not runner.plan()[0].stale  # idle for less than the timeout
    now["at"] += timedelta(seconds=20)  # idle 70 s: watermark 12:00:35 + 70 s = 12:01:45
    (assessment,) = runner.plan()
    assert assessment.stale and "idle for 70s" in assessment.reason
    task = build(root, clock=clock)
    assert task.metrics["idle_batches"] == 1
    assert table_windows(root) == {("a", BASE, BASE + 60): (1, 1.0)}
    assert not Runner(load_project(root), clock=clock).plan()[0].stale  # [12:01, 12:02) open
    now["at"] += timedelta(seconds=30)
    build(root, clock=clock)
    assert table_windows(root) == {
        ("a", BASE, BASE + 60): (1, 1.0),
        ("b", BASE + 60, BASE + 120): (1, 2.0),
    }
    assert stream_state(root)["state"] is None  # nothing left open


def test_the_stream_loop_reports_watermark_state_and_latency(tmp_path: Path) -> None:
    root = make_project(tmp_path, Spec("tumbling", lateness=0, within=60))
    land(root, 0, [Event(1, "a", BASE + 10, 1.0), Event(1, "a", BASE + 10, 1.0)])
    land(root, 1, [Event(2, "a", BASE + 70, 1.0)])
    loop = StreamLoop(Runner(load_project(root)))
    for flow in loop.flows.values():
        flow.trigger = "available_now"
    flows = loop.run(threading.Event())
    last = flows["agg"].last
    assert last["watermark"] == "2024-01-01T12:01:10+00:00"
    assert last["state_rows"] == 3 and last["rows_deduplicated"] == 1
    expected = (datetime.now(UTC) - datetime(2024, 1, 1, 12, 1, 10, tzinfo=UTC)).total_seconds()
    assert abs(last["latency"] - expected) < 120


def test_a_python_stream_table_declares_event_time(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "lakeforge.yml").write_text("name: py\n")
    (tmp_path / "pipelines" / "agg.py").write_text(
        textwrap.dedent(
            """
            import lakeforge as lf

            @lf.stream_table(
                source=lf.files("landing/*.ndjson", max_files_per_batch=1),
                event_time="ts", allowed_lateness="0s",
                window={"session": {"gap": "30s"}, "by": "device"},
            )
            def agg(source):
                return source.aggregate(
                    "device, window_start, window_end, count(*) AS n, "
                    "round(avg(temp), 6) AS avg_temp"
                )
            """
        )
    )
    land(tmp_path, 0, [Event(1, "a", BASE, 1.0), Event(2, "a", BASE + 20, 3.0)])
    land(tmp_path, 1, [Event(3, "a", BASE + 100, 1.0)])
    build(tmp_path)
    assert table_windows(tmp_path) == {("a", BASE, BASE + 50): (2, 2.0)}


def test_configuration_errors_are_clear(tmp_path: Path) -> None:
    from lakeforge.graph.spec import DatasetConfig

    def error(**config: Any) -> str:
        with pytest.raises(ValueError) as info:
            DatasetConfig.model_validate(config)
        return str(info.value)

    assert "need(s) event_time" in error(mode="streaming", window={"tumbling": "1m"})
    assert "mode: streaming" in error(event_time="ts")
    assert "session window needs by" in error(
        mode="streaming", event_time="ts", window={"session": {"gap": "1m"}}
    )
    assert "not available for session windows" in error(
        mode="streaming", event_time="ts", output_mode="update",
        window={"session": {"gap": "1m"}, "by": "d"},
    )  # fmt: skip
    assert "slide" in error(
        mode="streaming", event_time="ts", window={"hopping": {"size": "1m", "slide": "2m"}}
    )
    update = DatasetConfig.model_validate(
        {"mode": "streaming", "event_time": "ts", "output_mode": "update",
         "window": {"tumbling": "1m", "by": ["device"]}}
    )  # fmt: skip
    assert update.write.model_dump()["keys"] == ["device", "window_start", "window_end"]
    root = make_project(
        tmp_path, Spec("tumbling", lateness=0), sql="SELECT count(*) AS n FROM source"
    )
    land(root, 0, [Event(1, "a", BASE, 1.0)])
    result = Runner(load_project(root)).run()
    error_ = result.tasks[0].error
    assert isinstance(error_, ConfigError)
    assert "window_start, window_end not in its output" in str(error_)


def test_event_time_settings_are_fingerprinted(tmp_path: Path) -> None:
    root = make_project(tmp_path, Spec("tumbling", lateness=10))
    payload = definition_payload(load_project(root).graph["agg"])
    assert payload["config"]["event_time"]["window"]["tumbling"] == "1m"  # type: ignore[index]
    plain = make_project(tmp_path / "plain", Spec(None, lateness=0))
    (plain / "models" / "agg.sql").write_text("SELECT 1 AS x\n")
    assert "event_time" not in definition_payload(load_project(plain).graph["agg"])["config"]  # type: ignore[operator]


# -- the operator alone, against the model, on random streams ---------------------------------


def operator_outcome(tmp_path: Path, spec: Spec, batches: list[list[Event]]) -> Outcome:
    """Run the operator batch by batch (state through its Parquet store, recovered each
    time as after a restart) and aggregate what it hands the transform."""
    from lakeforge.errors import Location
    from lakeforge.graph.spec import Dataset, DatasetConfig
    from lakeforge.streaming.operator import EventTimeOperator

    config = DatasetConfig.model_validate(
        {"mode": "streaming", "event_time": "ts", "allowed_lateness": spec.lateness,
         "window": {"tumbling": spec.size, "by": "device"}}
    )  # fmt: skip
    ds = Dataset("agg", config, Location("test"))
    out = Outcome()
    committed: list[dict[str, Any]] = []
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for batch_no, batch in enumerate(batches, start=1):
        operator = EventTimeOperator(ds, str(tmp_path))
        operator.recover(committed[::-1])
        data = pa.table(
            {
                "id": pa.array([e.id for e in batch], pa.int64()),
                "device": pa.array([e.device for e in batch], pa.string()),
                "ts": pa.array([e.ts * 1_000_000 for e in batch], pa.timestamp("us")),
                "temp": pa.array([e.temp for e in batch], pa.float64()),
            }
        )
        step = operator.before(data, now)
        committed.append(operator.state_to_commit(batch_no, {"kind": "test"}))
        operator.committed(batch_no)
        out.late.extend(r["id"] for r in (step.late.to_pylist() if step.late is not None else []))
        groups: dict[tuple[str, int, int], list[float]] = {}
        for r in step.events.to_pylist():
            key = (
                r["device"],
                int(r["window_start"].timestamp()),
                int(r["window_end"].timestamp()),
            )
            groups.setdefault(key, []).append(r["temp"])
        for key, temps in groups.items():
            assert key not in out.windows, f"window {key} emitted twice"
            out.windows[key] = (len(temps), round(sum(temps) / len(temps), 6))
    return out


event_lists = st.lists(
    st.tuples(st.integers(0, 400), st.sampled_from("ab"), st.integers(0, 9)),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=event_lists,
    lateness=st.integers(0, 120),
    size=st.sampled_from([30, 60, 90]),
    cuts=st.lists(st.integers(0, 40), max_size=5),
)
def test_tumbling_append_matches_the_model_on_random_streams(
    tmp_path_factory: pytest.TempPathFactory,
    events: list[tuple[int, str, int]],
    lateness: int,
    size: int,
    cuts: list[int],
) -> None:
    stream = [Event(i, d, BASE + t, float(v)) for i, (t, d, v) in enumerate(events)]
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    batches = [stream[a:b] for a, b in pairwise(bounds) if b > a]
    spec = Spec("tumbling", lateness=lateness, size=size)
    expected = run(spec, batches)
    got = operator_outcome(tmp_path_factory.mktemp("op"), spec, batches)
    assert got.windows == expected.windows
    assert sorted(got.late) == sorted(expected.late)
