"""Render the graph as text, Mermaid, Graphviz dot or JSON."""

from __future__ import annotations

from typing import Any

from lakeforge.graph.dag import Graph


def _edges(graph: Graph, names: list[str]) -> list[tuple[str, str]]:
    keep = set(names)
    return [(up, n) for n in names for up in graph[n].inputs if up in keep]


def render_mermaid(graph: Graph, names: list[str]) -> str:
    lines = ["flowchart LR"]
    for layer in ("bronze", "silver", "gold", None):
        members = [n for n in names if graph[n].layer == layer]
        if not members:
            continue
        if layer:
            lines.append(f"  subgraph {layer}")
        for n in members:
            shape = f"{n}([{n}])" if graph[n].is_view else f"{n}[{n}]"
            lines.append(f"    {shape}")
        if layer:
            lines.append("  end")
    lines.extend(f"  {up} --> {down}" for up, down in _edges(graph, names))
    return "\n".join(lines)


def render_dot(graph: Graph, names: list[str]) -> str:
    lines = ["digraph lakeforge {", "  rankdir=LR;"]
    for n in names:
        shape = "ellipse" if graph[n].is_view else "box"
        lines.append(f'  "{n}" [shape={shape}, label="{n}\\n{graph[n].layer or ""}"];')
    lines.extend(f'  "{up}" -> "{down}";' for up, down in _edges(graph, names))
    lines.append("}")
    return "\n".join(lines)


def render_text(graph: Graph, names: list[str]) -> str:
    width = max((len(n) for n in names), default=0)
    out = []
    for n in names:
        ds = graph[n]
        ups = ", ".join(u for u in ds.inputs) or "—"
        out.append(f"{n:<{width}}  {ds.layer or '':<6}  {ds.kind:<5}  ← {ups}")
    return "\n".join(out)


def render_json(graph: Graph, names: list[str]) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "name": n,
                "layer": graph[n].layer,
                "kind": graph[n].kind,
                "language": graph[n].language,
                "inputs": graph[n].inputs,
                "location": str(graph[n].location),
            }
            for n in names
        ],
        "edges": [{"from": up, "to": down} for up, down in _edges(graph, names)],
    }
