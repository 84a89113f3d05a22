"""Run-history retention: which runs a prune deletes, with what, and what it never touches;
the folded stream listing; the runner's automatic prune; ``lakeforge prune-history``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.metadata import retention
from lakeforge.metadata.models import CheckResultRecord, IntervalRow
from lakeforge.metadata.retention import Cutoffs, Pruned, RetentionKeeper, prune_runs
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.config import RetentionConfig

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    opened = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    yield opened
    opened.close()


def add_run(
    store: MetadataStore,
    run_id: str,
    age: timedelta,
    *,
    stream: str | None = None,
    status: str = "success",
    checks: int = 1,
) -> None:
    """A run that started ``age`` ago, with one task and ``checks`` check results."""
    at = NOW - age
    store.start_run(
        run_id,
        project="p",
        selection="events",
        full_refresh=False,
        started_at=at,
        options={"gate": True, **({"stream": stream} if stream else {})},
    )
    task_id = store.start_task(
        run_id, dataset="events", layer="bronze", reason="new data", started_at=at
    )
    store.record_check_results(
        [
            CheckResultRecord(
                run_id=run_id,
                task_id=task_id,
                dataset="events",
                name=f"c{i}",
                check_type="row_count",
                origin="check",
                severity="error",
                status="pass",
                value=1.0,
                published=True,
                created_at=at,
            )
            for i in range(checks)
        ]
    )
    if status != "running":
        store.finish_task(task_id, status="success", finished_at=at + timedelta(seconds=1))
        store.finish_run(run_id, status=status, finished_at=at + timedelta(seconds=1))


def run_ids(store: MetadataStore) -> set[str]:
    return {r.id for r in store.list_runs(10_000)}


def test_prunes_old_runs_and_old_micro_batches_with_their_tasks_and_checks(
    store: MetadataStore,
) -> None:
    add_run(store, "batch-old", 100 * DAY)
    add_run(store, "batch-new", 10 * DAY, checks=2)
    add_run(store, "mb-old", 8 * DAY, stream="s1", checks=3)
    add_run(store, "mb-new", 1 * DAY, stream="s1")
    add_run(store, "mb-old-failed", 9 * DAY, stream="s2", status="failed")
    add_run(store, "running-old", 200 * DAY, status="running")
    add_run(store, "mb-running-old", 200 * DAY, stream="s3", status="running")

    cutoffs = Cutoffs.of(RetentionConfig(runs="90d", micro_batches="7d"))
    dry = prune_runs(store, cutoffs, dry_run=True)
    assert run_ids(store) >= {"batch-old", "mb-old"}  # a dry run deletes nothing
    pruned = prune_runs(store, cutoffs)

    assert pruned == Pruned(runs=3, tasks=3, check_results=1 + 3 + 1)
    assert dry == Pruned(runs=3, tasks=3, check_results=5, dry_run=True)
    assert run_ids(store) == {"batch-new", "mb-new", "running-old", "mb-running-old"}
    assert {c.run_id for c in store.list_check_results()} == run_ids(store)
    with store.session() as session:
        from sqlalchemy import select

        from lakeforge.metadata.models import Task

        assert set(session.scalars(select(Task.run_id))) == run_ids(store)
    # A second prune finds nothing left to do.
    assert prune_runs(store, cutoffs) == Pruned()


def test_defaults_keep_batch_runs_and_prune_week_old_micro_batches(store: MetadataStore) -> None:
    add_run(store, "batch-ancient", 3000 * DAY)
    add_run(store, "mb-6d", 6 * DAY, stream="s")
    add_run(store, "mb-8d", 8 * DAY, stream="s")
    prune_runs(store, Cutoffs.of(RetentionConfig()))
    assert run_ids(store) == {"batch-ancient", "mb-6d"}
    # micro_batches: null keeps them; nothing configured prunes nothing.
    assert Cutoffs.of(RetentionConfig(micro_batches=None)).empty
    add_run(store, "mb-30d", 30 * DAY, stream="s")
    assert prune_runs(store, Cutoffs.of(RetentionConfig(micro_batches=None))) == Pruned()
    assert "mb-30d" in run_ids(store)


def test_runs_the_interval_ledger_points_at_are_kept(store: MetadataStore) -> None:
    add_run(store, "built-partition", 400 * DAY)
    add_run(store, "rebuilt-since", 300 * DAY)
    with store.session(write=True) as session:
        session.add(
            IntervalRow(
                dataset="daily",
                partition_key="2024-01-01",
                status="built",
                input_versions={},
                run_id="built-partition",
                updated_at=NOW - 400 * DAY,
            )
        )
    prune_runs(store, Cutoffs.of(RetentionConfig(runs="30d")))
    assert run_ids(store) == {"built-partition"}


def test_prunes_in_chunks(store: MetadataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "CHUNK", 3)
    for i in range(10):
        add_run(store, f"mb-{i}", 8 * DAY + timedelta(minutes=i), stream="s")
    add_run(store, "mb-kept", DAY, stream="s")
    assert prune_runs(store, Cutoffs.of(RetentionConfig())) == Pruned(10, 10, 10)
    assert run_ids(store) == {"mb-kept"}


def test_keeper_applies_at_most_every_few_minutes_and_never_raises(
    store: MetadataStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(retention.time, "monotonic", lambda: clock[0])
    keeper = RetentionKeeper(store, RetentionConfig())
    add_run(store, "mb-a", 8 * DAY, stream="s")
    assert keeper.after_run() == Pruned(1, 1, 1)
    add_run(store, "mb-b", 8 * DAY, stream="s")
    clock[0] += retention.APPLY_EVERY - 1
    assert keeper.after_run() is None  # not due yet
    assert "mb-b" in run_ids(store)
    clock[0] += 1
    assert keeper.after_run() == Pruned(1, 1, 1)

    def broken(*_: object, **__: object) -> Pruned:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(retention, "prune_runs", broken)
    clock[0] += retention.APPLY_EVERY
    with caplog.at_level(logging.WARNING, logger="lakeforge.metadata.retention"):
        assert keeper.after_run() is None
    assert "pruning the run history failed: RuntimeError: database is locked" in caplog.text


def test_streams_are_listed_folded_and_runs_filtered(store: MetadataStore) -> None:
    add_run(store, "batch-1", 3 * DAY)
    for i in range(4):
        add_run(store, f"s1-{i}", 2 * DAY - timedelta(minutes=i), stream="s1")
    add_run(store, "s1-failed", 2 * DAY - timedelta(minutes=9), stream="s1", status="failed")
    add_run(store, "s2-0", 4 * DAY, stream="s2")

    s1, s2 = store.list_streams()
    assert (s1.stream_id, s1.micro_batches, s1.failed) == ("s1", 5, 1)
    assert s1.first_started_at == NOW - 2 * DAY
    assert s1.first_started_at.tzinfo is not None
    assert (s1.last.id, s1.last.status) == ("s1-failed", "failed")
    assert (s2.stream_id, s2.micro_batches, s2.last.id) == ("s2", 1, "s2-0")
    assert [s.stream_id for s in store.list_streams(limit=1)] == ["s1"]

    assert [r.id for r in store.list_runs(micro_batches=False)] == ["batch-1"]
    assert [r.id for r in store.list_runs(stream_id="s2")] == ["s2-0"]
    assert store.list_runs(stream_id="s1", limit=2)[0].id == "s1-failed"
    assert all(r.stream_id == "s1" for r in store.list_runs(stream_id="s1"))


# -- the CLI and the runner ---------------------------------------------------------------

PROJECT = """\
name: retention
{retention}
"""
MODEL = """\
SELECT 1 AS id
"""


def make_project(tmp_path: Path, retention_yaml: str = "") -> Path:
    root = tmp_path / "proj"
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text(PROJECT.format(retention=retention_yaml))
    (root / "models" / "one.sql").write_text(MODEL)
    return root


def project_store(root: Path) -> MetadataStore:
    (root / ".lakeforge").mkdir(exist_ok=True)
    return MetadataStore(f"sqlite:///{(root / '.lakeforge' / 'metadata.db').resolve()}")


def cli(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--project-dir", str(root), *args])
    return result.exit_code, result.output


def test_history_folds_streams_and_lists_one_with_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakeforge.cli import output

    monkeypatch.setattr(output.console, "_width", 200)  # the table on one line per entry
    root = make_project(tmp_path)
    with project_store(root) as store:
        add_run(store, "batch-1", DAY)
        for i in range(3):
            add_run(store, f"mb-{i}", 2 * DAY - timedelta(minutes=i), stream="abc123")
    code, out = cli(root, "history", "--json")
    assert code == 0, out
    entries = json.loads(out)
    assert [(e["kind"], e.get("id") or e.get("stream_id")) for e in entries] == [
        ("run", "batch-1"),
        ("stream", "abc123"),
    ]
    assert (entries[1]["micro_batches"], entries[1]["last_run"]) == (3, "mb-2")

    code, out = cli(root, "history", "--stream", "abc123", "--json")
    assert code == 0, out
    assert [e["id"] for e in json.loads(out)] == ["mb-2", "mb-1", "mb-0"]

    code, out = cli(root, "history")
    assert code == 0, out
    assert "stream abc123" in out and "3 micro-batches" in out

    code, out = cli(root, "history", "--stream", "nope")
    assert code == 2 and "no run of stream 'nope'" in out
    code, out = cli(root, "history", "one", "--stream", "abc123")
    assert code == 2 and "without a dataset" in out


def test_prune_history_command(tmp_path: Path) -> None:
    root = make_project(tmp_path, "retention: {runs: 30d}")
    with project_store(root) as store:
        add_run(store, "batch-old", 40 * DAY)
        add_run(store, "batch-new", 20 * DAY)
        add_run(store, "mb-old", 8 * DAY, stream="s")
        add_run(store, "mb-new", 2 * DAY, stream="s")

    code, out = cli(root, "prune-history", "--dry-run", "--json")
    assert code == 0, out
    assert json.loads(out)["runs"] == 2 and json.loads(out)["dry_run"] is True
    code, out = cli(root, "prune-history", "--micro-batches", "1d")
    assert code == 0, out
    assert "deleted 3 run(s), 3 task(s) and 3 check result(s)" in " ".join(out.split())
    with project_store(root) as store:
        assert run_ids(store) == {"batch-new"}

    code, out = cli(root, "prune-history", "--older-than", "soon")
    assert code == 2 and "--older-than" in out and "invalid duration 'soon'" in out
    code, out = cli(root, "prune-history", "--micro-batches", "0s")
    assert code == 2 and "longer than zero" in out


def test_a_run_prunes_old_micro_batches(tmp_path: Path) -> None:
    root = make_project(tmp_path, "retention: {micro_batches: 3d}")
    with project_store(root) as store:
        add_run(store, "mb-old", 4 * DAY, stream="s")
        add_run(store, "mb-new", 2 * DAY, stream="s")
    code, out = cli(root, "run")
    assert code == 0, out
    with project_store(root) as store:
        ids = run_ids(store)
    assert "mb-old" not in ids and "mb-new" in ids and len(ids) == 2


def test_retention_config_rejects_bad_durations(tmp_path: Path) -> None:
    root = make_project(tmp_path, "retention: {runs: forever}")
    code, out = cli(root, "history")
    assert code == 1
    assert "lakeforge.yml:2: retention.runs: invalid duration 'forever'" in out
