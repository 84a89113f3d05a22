"""Selection syntax.

A selection is a space-separated union of terms:

- ``name``       the dataset; ``name*`` style globs match several
- ``+name``      the dataset and everything upstream of it
- ``name+``      the dataset and everything downstream of it
- ``+name+``     both
- ``layer:silver``, ``tag:finance``, ``owner:sales`` — by attribute
"""

from __future__ import annotations

import fnmatch

from lakeforge.errors import GraphError
from lakeforge.graph.dag import Graph

_ATTRIBUTES = ("layer", "tag", "owner", "kind")


def select(graph: Graph, selection: str | list[str] | None) -> list[str]:
    """Resolve a selection to dataset names in dependency order; empty means everything."""
    if isinstance(selection, list):
        selection = " ".join(selection)
    terms = (selection or "").split()
    if not terms:
        return list(graph.order)
    chosen: set[str] = set()
    for term in terms:
        chosen |= _resolve_term(graph, term)
    return graph.ordered(chosen)


def _resolve_term(graph: Graph, term: str) -> set[str]:
    up = term.startswith("+")
    down = term.endswith("+") and len(term) > 1
    core = term[1 if up else 0 : len(term) - 1 if down else len(term)]
    if not core:
        raise GraphError(f"empty selection term {term!r}", hint="e.g. +orders or layer:gold")
    base = _match(graph, core, term)
    out = set(base)
    for name in base:
        if up:
            out |= graph.upstream_closure(name)
        if down:
            out |= graph.downstream_closure(name)
    return out


def _match(graph: Graph, core: str, term: str) -> set[str]:
    if ":" in core:
        attr, _, value = core.partition(":")
        if attr not in _ATTRIBUTES:
            raise GraphError(
                f"unknown selector {attr!r} in {term!r}",
                hint=f"use one of: {', '.join(a + ':' for a in _ATTRIBUTES)}",
            )
        found = {
            name
            for name, ds in graph.datasets.items()
            if (attr == "layer" and ds.layer == value)
            or (attr == "tag" and value in ds.config.tags)
            or (attr == "owner" and ds.config.owner == value)
            or (attr == "kind" and ds.kind == value)
        }
    elif any(ch in core for ch in "*?["):
        found = {name for name in graph.datasets if fnmatch.fnmatchcase(name, core)}
    else:
        graph[core]  # raises with a did-you-mean when unknown
        found = {core}
    if not found:
        raise GraphError(f"selection {term!r} matches no dataset", hint="`lakeforge ls` lists them")
    return found
