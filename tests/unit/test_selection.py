"""Selection syntax over a small graph."""

from __future__ import annotations

import pytest

from lakeforge.errors import GraphError, Location
from lakeforge.graph.dag import Graph
from lakeforge.graph.selection import select
from lakeforge.graph.spec import Dataset, DatasetConfig


def node(name: str, inputs: list[str], **config: object) -> Dataset:
    return Dataset(
        name=name,
        config=DatasetConfig(name=name, **config),  # type: ignore[arg-type]
        location=Location(f"{name}.sql", 1),
        inputs=inputs,
        sql="SELECT 1",
    )


@pytest.fixture
def graph() -> Graph:
    return Graph(
        [
            node("raw_a", [], layer="bronze"),
            node("raw_b", [], layer="bronze", tags=["finance"]),
            node("a", ["raw_a"], layer="silver"),
            node("b", ["raw_b"], layer="silver", tags=["finance"]),
            node("report", ["a", "b"], layer="gold", owner="bi"),
            node("other", ["a"], layer="gold"),
        ]
    )


def test_empty_selects_all_in_dependency_order(graph: Graph) -> None:
    names = select(graph, None)
    assert set(names) == set(graph.datasets)
    assert names.index("raw_a") < names.index("a") < names.index("report")


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("a", {"a"}),
        ("+a", {"a", "raw_a"}),
        ("a+", {"a", "report", "other"}),
        ("+report", {"report", "a", "b", "raw_a", "raw_b"}),
        ("+b+", {"raw_b", "b", "report"}),
        ("layer:bronze", {"raw_a", "raw_b"}),
        ("tag:finance", {"raw_b", "b"}),
        ("owner:bi", {"report"}),
        ("raw_*", {"raw_a", "raw_b"}),
        ("a b", {"a", "b"}),
        ("layer:gold +b", {"report", "other", "b", "raw_b"}),
    ],
)
def test_terms(graph: Graph, selection: str, expected: set[str]) -> None:
    assert set(select(graph, selection)) == expected


def test_unknown_name_suggests(graph: Graph) -> None:
    with pytest.raises(GraphError) as err:
        select(graph, "reprt")
    assert err.value.hint == "did you mean 'report'?"


@pytest.mark.parametrize("selection", ["layer:platinum", "colour:red", "+", "zzz*"])
def test_bad_terms(graph: Graph, selection: str) -> None:
    with pytest.raises(GraphError):
        select(graph, selection)
