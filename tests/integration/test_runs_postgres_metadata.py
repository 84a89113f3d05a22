"""A whole run recorded in a PostgreSQL metadata store (the scale-out configuration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakeforge.execution.executor import Runner
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project

pytestmark = pytest.mark.integration


def test_run_records_in_postgres(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lakeforge.yml").write_text("name: pg\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.sql").write_text("SELECT range AS id FROM range(10)\n")
    (tmp_path / "models" / "b.sql").write_text("SELECT count(*) AS n FROM a\n")
    (tmp_path / "models" / "broken.sql").write_text("SELECT nope FROM a\n")
    monkeypatch.setenv("LAKEFORGE_METADATA_URL", postgres_url)
    project = load_project(tmp_path)
    assert project.metadata_url == postgres_url
    first = Runner(project).run()
    second = Runner(project).run("a b")
    store = MetadataStore(postgres_url)
    runs = {r.id: r for r in store.list_runs(50)}
    assert runs[first.run_id].status == "failed"
    assert runs[second.run_id].status == "success"
    tasks = {t.dataset: t for t in store.get_run(first.run_id).tasks}
    assert tasks["a"].status == "success" and tasks["a"].output_version == 0
    assert tasks["b"].input_versions == {"a": 0}
    assert tasks["broken"].status == "failed" and "nope" in (tasks["broken"].error or "")
    assert {t.status for t in store.get_run(second.run_id).tasks} == {"up_to_date"}
    assert not (tmp_path / ".lakeforge" / "metadata.db").exists()
