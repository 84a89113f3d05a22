"""Runs end to end on small projects: idempotency, staleness reasons, failure isolation,
retries, views, the run log and the metadata records."""

from __future__ import annotations

import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from lakeforge.execution.executor import Runner
from lakeforge.execution.retry import retry_wait
from lakeforge.metadata.store import MetadataStore
from lakeforge.observability.runlog import RunLog
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore, app_id

PIPELINE = """
import lakeforge as lf

@lf.table(layer="silver", write=lf.Merge(keys=["id"], sequence_by="v"))
def clean(raw):
    return raw.filter("id IS NOT NULL")

@lf.view
def recent(clean):
    return clean.filter("v >= 2")

@lf.table(layer="gold")
def summary(recent, context):
    assert context.dataset == "summary"
    return recent.aggregate("count(*) AS n, sum(v) AS total")
"""


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    write(tmp_path, "lakeforge.yml", "name: demo\nthreads: 2\n")
    write(tmp_path, "landing/a.csv", "id,v,name\n1,1,ä\n2,2,b\n2,3,b2\n,9,null-key\n")
    write(tmp_path, "models/bronze/raw.sql", "SELECT * FROM read_csv('landing/*.csv')\n")
    write(tmp_path, "pipelines/p.py", PIPELINE)
    return tmp_path


def versions(store: DeltaStore, names: list[str]) -> dict[str, int | None]:
    return {n: store.version(n) for n in names}


def runner(root: Path, **kw: object) -> Runner:
    return Runner(load_project(root), **kw)  # type: ignore[arg-type]


def test_first_run_builds_everything_second_run_changes_nothing(project_dir: Path) -> None:
    first = runner(project_dir).run()
    assert first.ok, [t.error for t in first.tasks]
    status = {t.dataset: t.status for t in first.tasks}
    assert status == {"raw": "success", "clean": "success", "recent": "view", "summary": "success"}
    store = DeltaStore(str(project_dir / "lakehouse"))
    before = versions(store, ["raw", "clean", "summary"])
    content = {
        n: store.open(n)
        .to_pyarrow_table()
        .sort_by(store.open(n).to_pyarrow_table().column_names[0])
        for n in ["clean", "summary"]
    }
    second = runner(project_dir).run()
    assert second.ok
    assert {t.dataset: t.status for t in second.tasks if t.status != "view"} == {
        "raw": "up_to_date",
        "clean": "up_to_date",
        "summary": "up_to_date",
    }
    assert versions(store, ["raw", "clean", "summary"]) == before
    for name, table in content.items():
        now = store.open(name).to_pyarrow_table()
        assert now.sort_by(now.column_names[0]).equals(table)
    summary = store.open("summary").to_pyarrow_table().to_pylist()
    assert summary == [{"n": 1, "total": 3}]


def test_commit_records_run_fingerprint_inputs_and_app_transaction(project_dir: Path) -> None:
    result = runner(project_dir).run()
    store = DeltaStore(str(project_dir / "lakehouse"))
    state = store.state("summary")
    assert state is not None and state.last_commit is not None
    assert state.last_commit.run_id == result.run_id
    assert state.last_commit.input_versions == {"clean": 0}
    assert store.open("summary").transaction_version(app_id("summary")) == 1


def test_change_propagates_with_reasons(project_dir: Path) -> None:
    runner(project_dir).run()
    write(project_dir, "landing/b.csv", "id,v,name\n3,5,c\n")
    result = runner(project_dir).run()
    reasons = {t.dataset: t.reason for t in result.tasks}
    assert reasons["raw"] == "files changed: landing/*.csv"
    assert reasons["clean"] == "new input version: raw v0 → v1"
    assert reasons["summary"] == "new input version: clean v0 → v1"
    store = DeltaStore(str(project_dir / "lakehouse"))
    assert store.open("summary").to_pyarrow_table().to_pylist() == [{"n": 2, "total": 8}]


def test_code_change_rebuilds_only_that_dataset_and_downstream(project_dir: Path) -> None:
    runner(project_dir).run()
    # Formatting-only change of the SQL does not count; a semantic change does.
    write(
        project_dir,
        "models/bronze/raw.sql",
        "select *\n  from read_csv('landing/*.csv')  -- same\n",
    )
    assert all(t.status != "success" for t in runner(project_dir).run().tasks)
    write(project_dir, "pipelines/p.py", PIPELINE.replace('"v >= 2"', '"v >= 3"'))
    result = runner(project_dir).run()
    status = {t.dataset: (t.status, t.reason) for t in result.tasks}
    assert status["raw"][0] == "up_to_date" and status["clean"][0] == "up_to_date"
    # The view changed: its consumer's fingerprint covers it.
    assert status["summary"] == ("success", "code changed")


def test_full_refresh_rebuilds_everything(project_dir: Path) -> None:
    runner(project_dir).run()
    result = runner(project_dir).run(full_refresh=True)
    assert {t.dataset for t in result.tasks if t.status == "success"} == {"raw", "clean", "summary"}
    store = DeltaStore(str(project_dir / "lakehouse"))
    assert store.open("clean").to_pyarrow_table().num_rows == 2


def test_failure_skips_only_downstream(project_dir: Path) -> None:
    write(project_dir, "models/side.sql", "SELECT id FROM raw\n")
    write(project_dir, "models/broken.sql", "SELECT no_such_column FROM raw\n")
    write(project_dir, "models/after_broken.sql", "SELECT * FROM broken\n")
    result = runner(project_dir).run()
    status = {t.dataset: t.status for t in result.tasks}
    assert status["broken"] == "failed"
    assert status["after_broken"] == "upstream_failed"
    assert status["side"] == "success" and status["summary"] == "success"
    assert not result.ok
    err = next(t.error for t in result.tasks if t.dataset == "broken")
    assert err is not None and err.location is not None
    assert err.location.file == "models/broken.sql" and err.location.line == 1
    meta = MetadataStore(load_project(project_dir).metadata_url)
    run = meta.get_run(result.run_id)
    assert run.status == "failed"
    assert {t.dataset: t.status for t in run.tasks}["after_broken"] == "upstream_failed"


def test_transient_errors_are_retried_with_backoff(project_dir: Path) -> None:
    write(
        project_dir,
        "pipelines/flaky.py",
        """
        import lakeforge as lf
        from lakeforge.errors import TransientSourceError

        CALLS = []

        @lf.table(retries=3)
        def flaky(raw):
            CALLS.append(1)
            if len(CALLS) < 3:
                raise TransientSourceError("upstream API hiccup")
            return raw
        """,
    )
    sleeps: list[float] = []
    result = runner(project_dir, sleep=sleeps.append).run("+flaky")
    task = next(t for t in result.tasks if t.dataset == "flaky")
    assert task.status == "success" and task.attempts == 3
    assert len(sleeps) == 2


def test_terminal_errors_are_not_retried(project_dir: Path) -> None:
    write(
        project_dir,
        "pipelines/bad.py",
        "import lakeforge as lf\n\n@lf.table(retries=5)\n"
        "def bad(raw):\n    raise ValueError('boom')\n",
    )
    sleeps: list[float] = []
    result = runner(project_dir, sleep=sleeps.append).run("+bad")
    task = next(t for t in result.tasks if t.dataset == "bad")
    assert task.status == "failed" and task.attempts == 1 and sleeps == []
    assert task.error is not None and "ValueError: boom" in str(task.error)
    assert task.error.location is not None and task.error.location.line == 5


@dataclass
class Policy:
    backoff: str = "exponential"
    retry_delay: str | float = 1.0
    max_delay: str | float = 8.0
    jitter: bool = True


def test_backoff_is_bounded_and_jittered() -> None:
    policy = Policy()
    delays = [retry_wait(policy, a) for a in range(1, 10) for _ in range(20)]  # type: ignore[arg-type]
    assert all(0 <= d <= 8 for d in delays)
    assert len({round(d, 6) for d in delays}) > 50
    # Full jitter stays under each attempt's exponential ceiling.
    assert all(0 <= retry_wait(policy, 2) <= 2 for _ in range(50))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("exponential", [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
        ("linear", [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]),
        ("constant", [2.0] * 6),
    ],
)
def test_backoff_kinds_without_jitter(backoff: str, expected: list[float]) -> None:
    policy = Policy(backoff=backoff, retry_delay="2s", max_delay="30s", jitter=False)
    assert [retry_wait(policy, a) for a in range(1, 7)] == expected  # type: ignore[arg-type]
    assert retry_wait(policy, 10_000) <= 30.0  # type: ignore[arg-type]  # no overflow


def test_retry_policy_from_the_sql_header_and_defaults(project_dir: Path) -> None:
    write(project_dir, "lakeforge.yml", "name: demo\ndefaults: {retries: 2, jitter: false}\n")
    write(
        project_dir,
        "pipelines/flaky.py",
        "import lakeforge as lf\n\n"
        "calls = []\n\n"
        "@lf.table(backoff='linear', retry_delay='3s', max_delay='5s')\n"
        "def flaky(raw):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 1:\n"
        "        raise ConnectionError('connection reset')  # the network: transient\n"
        "    if len(calls) == 2:\n"
        "        raise lf.TransientError('API answered 503')\n"
        "    return raw\n",
    )
    sleeps: list[float] = []
    result = runner(project_dir, sleep=sleeps.append).run("+flaky")
    task = next(t for t in result.tasks if t.dataset == "flaky")
    assert task.status == "success" and task.attempts == 3, task.error
    assert sleeps == [3.0, 5.0]  # linear 3 s, 6 s capped at 5 s; no jitter from defaults


def test_run_log_has_standard_fields(project_dir: Path) -> None:
    result = runner(project_dir).run()
    records = RunLog(project_dir / ".lakeforge").read(result.run_id)
    by_ds = {r["dataset"]: r for r in records}
    assert set(by_ds) == {"raw", "clean", "summary"}
    clean = by_ds["clean"]
    for key in (
        "pipeline_name",
        "run_id",
        "started_at",
        "completed_at",
        "status",
        "stage",
        "rows_extracted",
        "rows_transformed",
        "rows_loaded",
        "rows_rejected",
        "quality_checks_passed",
        "quality_checks_failed",
        "duration_seconds",
        "error_message",
        "watermark_before",
        "watermark_after",
        "input_versions",
        "output_version",
    ):
        assert key in clean
    assert clean["status"] == "success" and clean["pipeline_name"] == "demo"
    assert clean["rows_extracted"] == 4 and clean["rows_transformed"] == 3
    assert clean["input_versions"] == {"raw": 0} and clean["output_version"] == 0


def test_selection_with_unbuilt_input_fails_with_hint(project_dir: Path) -> None:
    result = runner(project_dir).run("clean")
    task = next(t for t in result.tasks if t.dataset == "clean")
    assert task.status == "failed"
    assert task.error is not None and "+clean" in (task.error.hint or "")


def test_concurrent_runs_build_a_dataset_once(project_dir: Path) -> None:
    write(
        project_dir,
        "pipelines/appender.py",
        "import lakeforge as lf\n\n@lf.table(write=lf.Append())\ndef log(raw):\n    return raw\n",
    )
    runner(project_dir).run("raw")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(runner(project_dir).run("log")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(t.status for r in results for t in r.tasks)
    # The lock serializes the builds: the first builds, the others then find it up to date.
    assert statuses == ["success", "up_to_date", "up_to_date"]
    store = DeltaStore(str(project_dir / "lakehouse"))
    assert store.open("log").to_pyarrow_table().num_rows == 4
    assert store.committed_batch("log") == 1


def test_editing_decorator_docs_or_checks_does_not_rebuild(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: fp\n")
    body = """
    import lakeforge as lf

    @lf.table(description="{desc}", checks=[{{"type": "row_count", "min": {n}}}])
    def t():
        return lf_rows()

    def lf_rows():
        import pyarrow as pa
        return pa.table({{"x": [1, 2]}})
    """
    write(tmp_path, "pipelines/p.py", body.format(desc="first", n=1))
    assert runner(tmp_path).run().ok
    write(tmp_path, "pipelines/p.py", body.format(desc="second", n=2))
    assert [a.stale for a in runner(tmp_path).plan()] == [False]
    write(
        tmp_path,
        "pipelines/p.py",
        body.format(desc="x", n=1).replace("return lf_rows()", "return lf_rows().slice(1)"),
    )
    assert [a.reason for a in runner(tmp_path).plan()] == ["code changed"]
