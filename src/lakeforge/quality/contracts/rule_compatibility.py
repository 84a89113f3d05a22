"""How a contract's quality rules changed: added, removed, tightened or loosened.

A rule is tighter when the values its operator accepts shrink (``mustBeLessThan: 5`` →
``3``, a ``validValues`` list losing a value) and looser when they grow; a change that is
neither is breaking. Rules are matched by ``name``, else by what they measure. Only enforced
rules at ``error`` severity carry a guarantee: adding or removing a text, custom or warning
rule is fully compatible.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic.alias_generators import to_camel

from lakeforge.quality.contracts.changes import (
    Category,
    Compatibility,
    ContractChange,
    classify_strictness,
    jsonable,
)
from lakeforge.quality.contracts.operators import plain_number

if TYPE_CHECKING:
    from lakeforge.quality.contracts.model import QualityRule


@dataclass(frozen=True)
class _Allowed:
    """The values an operator accepts: [lo, hi] (ends open or closed), or its complement."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = False
    hi_closed: bool = False
    outside: bool = False

    @classmethod
    def of(cls, rule: QualityRule) -> _Allowed | None:
        op, value = rule.operator
        if isinstance(value, list):
            a, b = float(value[0]), float(value[1])
            return cls(a, b, True, True, outside=op == "must_not_be_between")
        if not isinstance(value, int | float):
            return None
        v = float(value)
        return {
            "must_be": cls(v, v, True, True),
            "must_not_be": cls(v, v, True, True, outside=True),
            "must_be_greater_than": cls(lo=v),
            "must_be_greater_or_equal_to": cls(lo=v, lo_closed=True),
            "must_be_less_than": cls(hi=v),
            "must_be_less_or_equal_to": cls(hi=v, hi_closed=True),
        }[op]

    def inside_within(self, other: _Allowed) -> bool:
        lo_ok = self.lo > other.lo or (
            self.lo == other.lo and (not self.lo_closed or other.lo_closed)
        )
        hi_ok = self.hi < other.hi or (
            self.hi == other.hi and (not self.hi_closed or other.hi_closed)
        )
        return lo_ok and hi_ok

    def disjoint(self, other: _Allowed) -> bool:
        below = self.hi < other.lo or (
            self.hi == other.lo and not (self.hi_closed and other.lo_closed)
        )
        above = self.lo > other.hi or (
            self.lo == other.hi and not (self.lo_closed and other.hi_closed)
        )
        return below or above

    def within(self, other: _Allowed) -> bool:
        if not self.outside and not other.outside:
            return self.inside_within(other)
        if not self.outside:
            return self.disjoint(other)
        if not other.outside:
            return other.lo == -math.inf and other.hi == math.inf
        return other.inside_within(self)


def _rule_identity(rule: QualityRule) -> tuple[Any, ...]:
    """What a rule measures, whatever its bound: two versions of one rule share it."""
    kind = rule.kind
    if kind == "library":
        metric = rule.library_metric
        if metric == "invalidValues":
            return (metric, "pattern" if "pattern" in rule.arguments else "validValues")
        if metric == "duplicateValues":
            return (metric, tuple(rule.arguments.get("properties") or ()))
        return (metric,)
    if kind == "sql":
        return ("sql", " ".join((rule.query or "").split()).lower())
    if kind == "custom":
        return ("custom", rule.engine, json.dumps(rule.implementation, sort_keys=True))
    return ("text", rule.description)


def _pair_rules(
    old: list[QualityRule], new: list[QualityRule]
) -> tuple[list[tuple[QualityRule, QualityRule]], list[QualityRule], list[QualityRule]]:
    """(matched pairs, removed, added): by name first, then by what the rule measures."""
    pairs: list[tuple[QualityRule, QualityRule]] = []
    removed, added = list(old), list(new)
    keys: tuple[Callable[[QualityRule], Any], ...] = (lambda r: r.name, _rule_identity)
    for key in keys:
        for a in list(removed):
            wanted = key(a)
            b = next((b for b in added if wanted is not None and key(b) == wanted), None)
            if b is not None:
                pairs.append((a, b))
                removed.remove(a)
                added.remove(b)
    return pairs, removed, added


def _rule_label(rule: QualityRule) -> str:
    if rule.name:
        return rule.name
    kind = rule.kind
    if kind not in ("library", "sql"):
        return f"{kind}: {rule.description or rule.engine or ''}".strip()
    op, value = rule.operator
    what = rule.library_metric if kind == "library" else "sql"
    unit = " %" if rule.unit == "percent" else ""
    shown = [_show(v) for v in value] if isinstance(value, list) else _show(value)
    return f"{what} {to_camel(op)} {shown}{unit}".replace("'", "")


def _show(value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        return plain_number(value)
    return str(value)


def diff_rules(
    ds: str, column: str | None, old: list[QualityRule], new: list[QualityRule]
) -> list[ContractChange]:
    pairs, removed, added = _pair_rules(old, new)
    changes = [_rule_change(ds, column, a, b) for a, b in pairs if jsonable(a) != jsonable(b)]
    for a in removed:
        enforced = a.enforced_severity == "error"
        changes.append(
            ContractChange(
                ds, column, "quality_rule_removed", _rule_label(a), None,
                "backward" if enforced else "full",
                "a guarantee is dropped: new data may break what old consumers rely on"
                if enforced else "the rule was not enforced (text, custom or warning)",
                "quality",
            )
        )  # fmt: skip
    for b in added:
        enforced = b.enforced_severity == "error"
        changes.append(
            ContractChange(
                ds, column, "quality_rule_added", None, _rule_label(b),
                "forward" if enforced else "full",
                "a new guarantee old data need not meet"
                if enforced else "the rule is not enforced (text, custom or warning)",
                "quality",
            )
        )  # fmt: skip
    return changes


def _rule_change(ds: str, column: str | None, old: QualityRule, new: QualityRule) -> ContractChange:
    label_old, label_new = _rule_label(old), _rule_label(new)
    sev_old, sev_new = old.enforced_severity == "error", new.enforced_severity == "error"
    if sev_old != sev_new:
        comp: Compatibility = "forward" if sev_new else "backward"
        why = "now blocking (error)" if sev_new else "no longer blocking (warning)"
    elif not sev_new:
        comp, why = "full", "the rule is not enforced (text, custom or warning)"
    else:
        tighter, looser = _rule_strictness(old, new)
        comp = classify_strictness(tighter, looser)
        why = {
            "forward": "tightened: old data may not meet it",
            "backward": "loosened: new data may break what old consumers rely on",
            "breaking": "changed in a way that is neither tighter nor looser",
            "full": "the same rule, reworded",
        }[comp]
    category: Category = "quality" if comp != "full" or sev_old != sev_new else "docs"
    return ContractChange(
        ds, column, "quality_rule_changed", label_old, label_new, comp, why, category
    )


def _rule_strictness(old: QualityRule, new: QualityRule) -> tuple[bool, bool]:
    """(tighter, looser) for two enforced versions of the same rule."""
    if old.kind != new.kind or old.unit != new.unit or old.query != new.query:
        return True, True
    if old.arguments.get("pattern") != new.arguments.get("pattern"):
        return True, True
    tighter = looser = False
    a, b = _Allowed.of(old), _Allowed.of(new)
    if a is None or b is None:
        if old.operator != new.operator:
            return True, True
    elif a != b:
        narrower, wider = b.within(a), a.within(b)
        tighter |= narrower or not wider
        looser |= wider or not narrower
    for arg, more_is_tighter in (("validValues", False), ("missingValues", True)):
        va, vb = old.arguments.get(arg), new.arguments.get(arg)
        if va == vb:
            continue
        sa = {json.dumps(v) for v in va or []}
        sb = {json.dumps(v) for v in vb or []}
        grew, shrank = sb > sa, sb < sa
        if not grew and not shrank:
            return True, True
        tighter |= grew if more_is_tighter else shrank
        looser |= shrank if more_is_tighter else grew
    return tighter, looser
