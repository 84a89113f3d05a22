"""Config, graph and SQL errors name the file, the line and what to do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lakeforge.errors import ConfigError, GraphError, SQLError
from lakeforge.project.loader import load_project


def make_project(root: Path, files: dict[str, str], config: str = "name: t\n") -> Path:
    (root / "lakeforge.yml").write_text(config)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def test_bad_yaml_in_config_names_line(tmp_path: Path) -> None:
    make_project(tmp_path, {}, config="name: t\nstorage: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert err.value.location is not None
    assert err.value.location.file.endswith("lakeforge.yml")
    assert err.value.location.line in (2, 3)


def test_unknown_config_key_names_line_and_allowed_keys(tmp_path: Path) -> None:
    make_project(tmp_path, {}, config="name: t\nengin: duckdb\n")
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert err.value.location.line == 2
    assert "engin" in str(err.value)
    assert err.value.hint and "engine" in err.value.hint


def test_bad_yaml_in_sql_header_points_into_the_sql_file(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "models/a.sql": """
            -- leading comment is not a header
            SELECT 1 AS x
            """,
            "models/b.sql": """
            /* lakeforge
            layer: silver
            write: {strategy: merge, keys: [id]
            */
            SELECT 1 AS id
            """,
        },
    )
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert err.value.location.file == "models/b.sql"
    assert err.value.location.line in (3, 4)


def test_invalid_header_value_names_key_and_line(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "models/b.sql": """
            /* lakeforge
            layer: silver
            write:
              strategy: merge
              keys: []
            */
            SELECT 1 AS id
            """
        },
    )
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert err.value.location == err.value.location.__class__("models/b.sql", 5)
    assert "write.keys" in str(err.value)


def test_unknown_strategy_is_a_config_error(tmp_path: Path) -> None:
    make_project(tmp_path, {"models/b.sql": "/* lakeforge\nwrite: upsert\n*/\nSELECT 1 AS id\n"})
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert err.value.location.line == 2


def test_bad_sql_names_file_and_line(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {"models/b.sql": "/* lakeforge\nlayer: silver\n*/\nSELECT a,\n  FROM (SELECT 1\n"},
    )
    with pytest.raises(SQLError) as err:
        load_project(tmp_path)
    assert err.value.location.file == "models/b.sql"
    assert err.value.location.line is not None and err.value.location.line >= 4


def test_an_unterminated_string_is_a_sql_error_with_its_place(tmp_path: Path) -> None:
    make_project(tmp_path, {"models/b.sql": "/* lakeforge\nlayer: silver\n*/\nSELECT 'abc AS x\n"})
    with pytest.raises(SQLError, match="does not parse") as err:
        load_project(tmp_path)
    assert (err.value.location.file, err.value.location.line) == ("models/b.sql", 4)


def test_non_select_sql_is_rejected(tmp_path: Path) -> None:
    make_project(tmp_path, {"models/b.sql": "DELETE FROM x\n"})
    with pytest.raises(SQLError, match="must be a SELECT"):
        load_project(tmp_path)


def test_unknown_reference_suggests_a_name(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "models/orders.sql": "SELECT 1 AS id\n",
            "models/report.sql": "SELECT * FROM order\n",
        },
    )
    with pytest.raises(GraphError) as err:
        load_project(tmp_path)
    assert "report" in str(err.value) and "'order'" in str(err.value)
    assert err.value.hint == "did you mean 'orders'?"
    assert err.value.location.file == "models/report.sql"


def test_unknown_python_parameter(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "pipelines/p.py": """
            import lakeforge as lf

            @lf.table
            def b(missing_upstream):
                return missing_upstream
            """
        },
    )
    with pytest.raises(GraphError, match="missing_upstream"):
        load_project(tmp_path)


def test_cycle_names_every_dataset(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "models/a.sql": "SELECT * FROM c\n",
            "models/b.sql": "SELECT * FROM a\n",
            "models/c.sql": "SELECT * FROM b\n",
        },
    )
    with pytest.raises(GraphError) as err:
        load_project(tmp_path)
    message = str(err.value)
    assert "cycle" in message
    for name in ("a", "b", "c"):
        assert name in message


def test_duplicate_dataset_names_show_both_places(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "models/x.sql": "SELECT 1 AS id\n",
            "pipelines/p.py": "import lakeforge as lf\n\n@lf.table\ndef x():\n    return None\n",
        },
    )
    with pytest.raises(GraphError) as err:
        load_project(tmp_path)
    assert "models/x.sql" in str(err.value) and "p.py" in str(err.value)


def test_pipeline_import_error_names_line(tmp_path: Path) -> None:
    make_project(tmp_path, {"pipelines/p.py": "import lakeforge as lf\n\nx = 1 / 0\n"})
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert err.value.location.file == "pipelines/p.py"
    assert err.value.location.line == 3
    assert "ZeroDivisionError" in str(err.value)


def test_decorator_bad_option(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "pipelines/p.py": (
                "import lakeforge as lf\n\n@lf.table(layer='platinum')\ndef x():\n    pass\n"
            )
        },
    )
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert "layer" in str(err.value)
    assert err.value.location.line == 3


def test_missing_project_has_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    assert err.value.hint and "lakeforge init" in err.value.hint


def test_defaults_apply_unless_overridden(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "models/a.sql": "SELECT 1 AS id\n",
            "models/b.sql": "/* lakeforge\nowner: me\n*/\nSELECT * FROM a\n",
        },
        config="name: t\ndefaults:\n  owner: team\n  retries: 2\n",
    )
    graph = load_project(tmp_path).graph
    assert graph["a"].config.owner == "team" and graph["a"].config.retries == 2
    assert graph["b"].config.owner == "me"


def test_layer_from_folder_and_file_functions_are_external(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        {
            "models/bronze/raw.sql": "WITH x AS (SELECT * FROM read_csv('landing/*.csv')) "
            "SELECT * FROM x\n",
        },
    )
    ds = load_project(tmp_path).graph["raw"]
    assert ds.layer == "bronze"
    assert ds.inputs == []
    assert ds.external_paths == ["landing/*.csv"]
