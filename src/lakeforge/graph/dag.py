"""The dataset graph: edges, validation (unknown references, cycles), order, traversal."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from graphlib import CycleError, TopologicalSorter

from lakeforge.errors import GraphError
from lakeforge.graph.spec import Dataset


class Graph:
    """A validated DAG of datasets; edges point from an input to its consumer."""

    def __init__(self, datasets: Iterable[Dataset]) -> None:
        self.datasets: dict[str, Dataset] = {}
        for ds in datasets:
            if ds.name in self.datasets:
                other = self.datasets[ds.name]
                raise GraphError(
                    f"dataset {ds.name!r} is defined twice: at {other.location} and "
                    f"at {ds.location}",
                    dataset=ds.name,
                    hint="rename one of them (decorator name= or the SQL header's name:)",
                )
            self.datasets[ds.name] = ds
        self._check_references()
        self.downstream: dict[str, list[str]] = {name: [] for name in self.datasets}
        for ds in self.datasets.values():
            for up in ds.inputs:
                self.downstream[up].append(ds.name)
        self.order = self._topological_order()

    def _check_references(self) -> None:
        from lakeforge.quality.gate import check_dependencies

        for ds in self.datasets.values():
            for ref in sorted(check_dependencies(ds.config.checks, ds.name)):
                if ref in self.datasets:
                    if self.datasets[ref].is_view:
                        raise GraphError(
                            f"a check of {ds.name} reads view {ref!r}; checks read stored tables",
                            location=ds.location,
                            dataset=ds.name,
                            hint="point the check at the table the view reads, or make it a table",
                        )
                    continue
                close = difflib.get_close_matches(ref, self.datasets, n=1)
                raise GraphError(
                    f"a check of {ds.name} reads unknown dataset {ref!r}",
                    location=ds.location,
                    dataset=ds.name,
                    hint=f"did you mean {close[0]!r}?"
                    if close
                    else "relationships `to:` and check SQL name datasets of the project",
                )
            for ref in ds.inputs:
                if ref in self.datasets:
                    continue
                close = difflib.get_close_matches(ref, self.datasets, n=1)
                kind = "parameter" if ds.language == "python" else "table reference"
                raise GraphError(
                    f"{ds.name} reads unknown dataset {ref!r} ({kind})",
                    location=ds.location,
                    dataset=ds.name,
                    hint=f"did you mean {close[0]!r}?"
                    if close
                    else "define it in pipelines/ or models/, or fix the name",
                )

    def _topological_order(self) -> list[str]:
        sorter: TopologicalSorter[str] = TopologicalSorter()
        for name in sorted(self.datasets):
            sorter.add(name, *self.datasets[name].inputs)
        try:
            return list(sorter.static_order())
        except CycleError as exc:
            cycle: list[str] = list(exc.args[1])
            path = " → ".join(reversed(cycle))
            raise GraphError(
                f"the datasets form a cycle: {path}",
                dataset=cycle[0],
                location=self.datasets[cycle[0]].location,
                hint="a dataset cannot read (directly or indirectly) from itself",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.datasets

    def __getitem__(self, name: str) -> Dataset:
        try:
            return self.datasets[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.datasets, n=1)
            raise GraphError(
                f"no dataset named {name!r}",
                hint=f"did you mean {close[0]!r}?" if close else "`lakeforge ls` lists them",
            ) from None

    def upstream_closure(self, name: str) -> set[str]:
        """All datasets ``name`` reads, directly or indirectly (excluding itself)."""
        seen: set[str] = set()
        stack = list(self.datasets[name].inputs)
        while stack:
            cur = stack.pop()
            if cur not in seen:
                seen.add(cur)
                stack.extend(self.datasets[cur].inputs)
        return seen

    def downstream_closure(self, name: str) -> set[str]:
        """All datasets that read ``name``, directly or indirectly (excluding itself)."""
        seen: set[str] = set()
        stack = list(self.downstream[name])
        while stack:
            cur = stack.pop()
            if cur not in seen:
                seen.add(cur)
                stack.extend(self.downstream[cur])
        return seen

    def materialized_inputs(self, name: str) -> list[str]:
        """The stored tables ``name`` depends on, looking through views."""
        out: list[str] = []
        stack = list(reversed(self.datasets[name].inputs))
        seen: set[str] = set()
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            ds = self.datasets[cur]
            if ds.is_view:
                stack.extend(reversed(ds.inputs))
            else:
                out.append(cur)
        return out

    def views_needed(self, name: str) -> list[str]:
        """Views ``name`` reads through, in dependency order (inputs before consumers)."""
        needed: set[str] = set()
        stack = list(self.datasets[name].inputs)
        while stack:
            cur = stack.pop()
            if cur in needed or not self.datasets[cur].is_view:
                continue
            needed.add(cur)
            stack.extend(self.datasets[cur].inputs)
        return [n for n in self.order if n in needed]

    def ordered(self, names: Iterable[str]) -> list[str]:
        wanted = set(names)
        return [n for n in self.order if n in wanted]
