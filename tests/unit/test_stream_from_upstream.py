"""A streaming table that reads another dataset: only the rows appended upstream since the
last micro-batch, exactly once, through the Delta change data feed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore

CLEAN = """
import lakeforge as lf

@lf.table(mode="streaming", stream_from={STREAM_FROM})
def clean(raw, regions):
    return raw.join(regions, "region").select("id, region, name, v * 10 AS v10")
"""


def make_project(root: Path, stream_from: str = "'raw'") -> Path:
    (root / "landing").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "pipelines").mkdir()
    (root / "lakeforge.yml").write_text("name: streams\n")
    (root / "models" / "raw.sql").write_text(
        textwrap.dedent(
            """
            /* lakeforge
            source: {path: "landing/*.csv", file_column: null}
            */
            SELECT * FROM source
            """
        ).lstrip()
    )
    (root / "models" / "regions.sql").write_text(
        "SELECT * FROM (VALUES ('eu', 'Europe'), ('us', 'Americas')) t(region, name)\n"
    )
    (root / "pipelines" / "clean.py").write_text(
        textwrap.dedent(CLEAN.replace("{STREAM_FROM}", stream_from))
    )
    return root


def land(root: Path, name: str, rows: list[tuple[int, str, int]]) -> None:
    body = "".join(f"{i},{r},{v}\n" for i, r, v in rows)
    (root / "landing" / name).write_text("id,region,v\n" + body)


def clean_rows(root: Path) -> list[tuple[int, str, int]]:
    table = DeltaStore(str(root / "lakehouse")).read("clean").to_table()
    return sorted((r["id"], r["name"], r["v10"]) for r in table.to_pylist())


def run(root: Path, *selection: str) -> dict[str, str]:
    result = Runner(load_project(root)).run(list(selection) or None)
    return {t.dataset: t.status for t in result.tasks}


def test_each_appended_row_is_read_once(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    land(root, "a.csv", [(1, "eu", 1), (2, "us", 2)])
    assert run(root)["clean"] == "success"  # the first micro-batch: raw's snapshot
    assert clean_rows(root) == [(1, "Europe", 10), (2, "Americas", 20)]
    store = DeltaStore(str(root / "lakehouse"))
    version = store.version("clean")
    assert run(root)["clean"] == "up_to_date" and store.version("clean") == version

    land(root, "b.csv", [(3, "eu", 3)])
    land(root, "c.csv", [(4, "us", 4)])
    assert run(root)["clean"] == "success"
    assert clean_rows(root) == [
        (1, "Europe", 10),
        (2, "Americas", 20),
        (3, "Europe", 30),
        (4, "Americas", 40),
    ]
    # Compaction upstream changes no data: nothing is read again.
    store.open("raw").optimize.compact()
    land(root, "d.csv", [(5, "eu", 5)])
    assert run(root)["clean"] == "success"
    assert [r[0] for r in clean_rows(root)] == [1, 2, 3, 4, 5]
    state = next(store.commit_infos("clean")).source_state
    assert state == {"kind": "delta", "upstream": "raw", "version": store.version("raw")}


def test_a_rewritten_upstream_stops_the_stream_unless_change_commits_are_skipped(
    tmp_path: Path,
) -> None:
    root = make_project(tmp_path)
    land(root, "a.csv", [(1, "eu", 1)])
    run(root)
    assert Runner(load_project(root)).run("raw", full_refresh=True).ok  # raw rewritten
    result = Runner(load_project(root)).run("clean")
    task = result.tasks[0]
    assert task.status == "failed" and task.error is not None
    assert "rewrote or deleted rows" in str(task.error)
    assert "skip_change_commits" in (task.error.hint or "")

    (root / "pipelines" / "clean.py").write_text(
        textwrap.dedent(
            CLEAN.replace("{STREAM_FROM}", "{'dataset': 'raw', 'skip_change_commits': True}")
        )
    )
    land(root, "b.csv", [(2, "us", 2)])
    assert run(root)["clean"] == "success"
    # The rewrite was skipped (row 1 is not read twice); the later append was read.
    assert [r[0] for r in clean_rows(root)] == [1, 2]


def test_which_input_streams_must_be_said_when_there_are_several(tmp_path: Path) -> None:
    root = make_project(tmp_path, stream_from="None")
    land(root, "a.csv", [(1, "eu", 1)])
    result = Runner(load_project(root)).run()
    task = next(t for t in result.tasks if t.dataset == "clean")
    assert task.status == "failed"
    assert "say which one is the stream" in str(task.error)
    assert task.error is not None and task.error.hint == (
        "stream_from: raw (the others are read whole at each micro-batch)"
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mode": "streaming", "write": "overwrite"}, "each micro-batch replace"),
        ({"mode": "streaming", "trigger": "soon"}, "invalid trigger 'soon'"),
        ({"stream_from": "raw"}, "stream_from applies to mode: streaming"),
    ],
)
def test_streaming_configuration_errors(config: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    from lakeforge.graph.spec import DatasetConfig

    with pytest.raises(ValidationError, match=message):
        DatasetConfig(**config)  # type: ignore[arg-type]
