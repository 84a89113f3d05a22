"""What ``lakeforge plan`` and ``lakeforge status`` show: reasons per partition range, the
code diff behind "code changed", and a terminal grid of a dataset's partitions."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.text import Text

if TYPE_CHECKING:
    from lakeforge.execution.intervals import PartitionPlan
    from lakeforge.execution.planner import Assessment
    from lakeforge.graph.dag import Graph

CELL = {"built": ("■", "green"), "stale": ("■", "yellow"), "failed": ("■", "red"),
        "running": ("◐", "blue"), "missing": ("·", "dim")}  # fmt: skip
_MAX_DIFF_LINES = 80


def partition_state(plan: PartitionPlan) -> str:
    """built, stale, failed, running or missing."""
    entry = plan.entry
    if entry is None:
        return "missing"
    if entry.status == "failed":
        return "failed"
    if entry.status == "running":
        return "running"
    return "stale" if plan.stale else "built"


def ranges(plans: list[PartitionPlan]) -> list[tuple[str, str, int, str]]:
    """Consecutive stale partitions with the same reason: (first, last, count, reason)."""
    out: list[tuple[str, str, int, str]] = []
    previous_stale = False
    for plan in plans:
        if not plan.stale:
            previous_stale = False
            continue
        reason = plan.reasons[0]
        if previous_stale and out and out[-1][3] == reason:
            first, _, count, _ = out[-1]
            out[-1] = (first, plan.key, count + 1, reason)
        else:
            out.append((plan.key, plan.key, 1, reason))
        previous_stale = True
    return out


def code_diff(old: str | None, new: str, old_fp: str, new_fp: str) -> list[str]:
    """A unified diff of two definitions (empty when the old one was never recorded)."""
    if old is None:
        return []
    lines = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), f"built ({old_fp})", f"now ({new_fp})",
            lineterm="", n=2,
        )
    )  # fmt: skip
    if not lines:
        # Same text, other fingerprint: the configuration that shapes the rows changed.
        return [f"--- built ({old_fp})", f"+++ now ({new_fp})",
                "  (same query text: the write, partitioning, column types or row filters "
                "changed)"]  # fmt: skip
    if len(lines) > _MAX_DIFF_LINES:
        lines = [*lines[:_MAX_DIFF_LINES], f"… {len(lines) - _MAX_DIFF_LINES} more line(s)"]
    return lines


def plan_report(
    assessments: list[Assessment],
    graph: Graph,
    definition: Callable[[str, str], str | None],
) -> list[dict[str, Any]]:
    """A JSON-able plan: per dataset, what would be built and why."""
    out: list[dict[str, Any]] = []
    for a in assessments:
        ds = graph[a.dataset]
        item: dict[str, Any] = {
            "dataset": a.dataset,
            "layer": ds.layer,
            "kind": ds.kind,
            "stale": a.stale,
            "reasons": a.reasons,
            "notes": list(a.notes),
        }
        old_fps: list[str] = []
        if a.partitions is not None:
            plans = a.partitions.partitions
            stale = a.partitions.stale
            item["partitions"] = {
                "total": len(plans),
                "to_build": len(stale),
                "ranges": [
                    {"first": f, "last": last, "count": n, "reason": r}
                    for f, last, n, r in ranges(plans)
                ],
                "notes": a.partitions.notes,
            }
            old_fps = sorted(
                {
                    p.entry.fingerprint
                    for p in stale
                    if p.reasons[0] == "code changed" and p.entry and p.entry.fingerprint
                }
            )
        elif "code changed" in a.reasons and a.state is not None and a.state.last_commit:
            old_fps = [a.state.last_commit.fingerprint]
        if old_fps:
            current = ds.sql or ds.source_text
            item["code_diff"] = code_diff(
                definition(a.dataset, old_fps[0]), current, old_fps[0], a.fingerprint
            )
        out.append(item)
    return out


def render_plan(report: list[dict[str, Any]]) -> list[Text | str]:
    """The plan as lines for the terminal."""
    lines: list[Text | str] = []
    to_build = [r for r in report if r["stale"]]
    for item in report:
        if item["kind"] == "view":
            continue
        head = f"[bold]{escape(item['dataset'])}[/]"
        if item.get("layer"):
            head += f" [dim]({item['layer']})[/]"
        parts = item.get("partitions")
        if not item["stale"]:
            notes = f" ({escape('; '.join(item['notes']))})" if item.get("notes") else ""
            lines.append(f"[green]✓[/] {head} [dim]up to date{notes}[/]")
            continue
        if parts is None:
            lines.append(f"[yellow]●[/] {head}: {escape('; '.join(item['reasons']))}")
        else:
            lines.append(
                f"[yellow]●[/] {head}: {parts['to_build']} of {parts['total']} partition(s) "
                "to build"
            )
            for r in parts["ranges"]:
                span = r["first"] if r["count"] == 1 else f"{r['first']} … {r['last']}"
                lines.append(f"    {span:<30} [dim]({r['count']})[/] {escape(r['reason'])}")
        for note in [*item.get("notes", []), *(parts or {}).get("notes", [])]:
            lines.append(f"    [dim]note: {escape(note)}[/]")
        for diff_line in item.get("code_diff", []):
            style = {"+": "green", "-": "red"}.get(diff_line[:1], "dim")
            lines.append(Text("      " + diff_line, style=style))
    partitions = sum((r.get("partitions") or {}).get("to_build", 0) for r in to_build)
    tail = f", {partitions} partition(s)" if partitions else ""
    lines.append(f"{len(to_build)} dataset(s) to build{tail}")
    return lines


def status_grid(assessment: Assessment, graph: Graph) -> list[Text]:
    """One line per month (daily), day (hourly) or year (monthly); a cell per partition."""
    assert assessment.partitions is not None
    parts = graph[assessment.dataset].config.partitions
    assert parts is not None
    plans = assessment.partitions.partitions
    lines: list[Text] = []
    if parts.kind == "static":
        line = Text("  ")
        for plan in plans:
            char, style = CELL[partition_state(plan)]
            line.append(f"{char} {plan.key}  ", style=style)
        return [line]
    group_len, cell_of = {
        "daily": (7, lambda k: int(k[8:10]) - 1),
        "hourly": (10, lambda k: int(k[11:13])),
        "monthly": (4, lambda k: int(k[5:7]) - 1),
    }[parts.kind]
    width = {"daily": 31, "hourly": 24, "monthly": 12}[parts.kind]
    rows: dict[str, list[tuple[str, str] | None]] = {}
    for plan in plans:
        group = plan.key[:group_len]
        cells = rows.setdefault(group, [None] * width)
        cells[cell_of(plan.key)] = CELL[partition_state(plan)]
    for group, cells in rows.items():
        line = Text(f"  {group}  ")
        for cell in cells:
            if cell is None:
                line.append("  ")
            else:
                line.append(cell[0] + " ", style=cell[1])
        lines.append(line)
    return lines


def legend() -> Text:
    line = Text("  ")
    for state, (char, style) in CELL.items():
        line.append(f"{char} {state}  ", style=style)
    return line
