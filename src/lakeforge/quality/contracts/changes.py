"""The changes between two versions of a contract, and their compatibility classes.

Compatibility has schema-registry semantics:

- BACKWARD: consumers on the *new* contract can read data produced under the *old* one.
- FORWARD: consumers on the *old* contract can read data produced under the *new* one.
- FULL: both. BREAKING: neither.

The overall class of a diff is the intersection of its changes' classes: all full → full;
any breaking, or backward-only and forward-only changes together → breaking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel

Compatibility = Literal["full", "backward", "forward", "breaking"]
Mode = Literal["forward", "backward", "full"]

_PRESERVES: dict[str, frozenset[str]] = {
    "full": frozenset({"backward", "forward"}),
    "backward": frozenset({"backward"}),
    "forward": frozenset({"forward"}),
    "breaking": frozenset(),
}
_MODE_NEEDS: dict[str, frozenset[str]] = {
    "forward": frozenset({"forward"}),
    "backward": frozenset({"backward"}),
    "full": frozenset({"backward", "forward"}),
}
Category = Literal["schema", "quality", "sla", "docs"]
CONTRACT_LEVEL = "(contract)"


@dataclass(frozen=True)
class ContractChange:
    """One difference between two versions of a contract.

    Attributes:
        object: the dataset (schema object) concerned, or ``(contract)``.
        property: the column concerned, if any.
        kind: what changed (``column_added``, ``type_changed``, ``quality_rule_removed`` …).
        old / new: the values before and after (None when absent).
        compatibility: ``full``, ``backward``, ``forward`` or ``breaking``.
        explanation: why it is classified so, in one sentence.
        category: ``schema``, ``quality``, ``sla`` or ``docs`` (decides the minimum bump).
    """

    object: str
    property: str | None
    kind: str
    old: Any
    new: Any
    compatibility: Compatibility
    explanation: str
    category: Category = "schema"

    def compatible(self, mode: Mode) -> bool:
        return _MODE_NEEDS[mode] <= _PRESERVES[self.compatibility]

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "property": self.property,
            "kind": self.kind,
            "old": self.old,
            "new": self.new,
            "compatibility": self.compatibility,
            "explanation": self.explanation,
            "category": self.category,
        }


@dataclass(frozen=True)
class ContractDiff:
    """The changes from one contract version to another and their overall compatibility."""

    old_version: str
    new_version: str
    changes: list[ContractChange] = field(default_factory=list)

    @property
    def compatibility(self) -> Compatibility:
        """The intersection of the changes' classes (``full`` when nothing changed)."""
        kept = frozenset({"backward", "forward"})
        for change in self.changes:
            kept &= _PRESERVES[change.compatibility]
        if kept == _PRESERVES["full"]:
            return "full"
        if kept == _PRESERVES["backward"]:
            return "backward"
        return "forward" if kept == _PRESERVES["forward"] else "breaking"

    def compatible(self, mode: Mode) -> bool:
        return _MODE_NEEDS[mode] <= _PRESERVES[self.compatibility]

    def incompatible_changes(self, mode: Mode) -> list[ContractChange]:
        return [c for c in self.changes if not c.compatible(mode)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version,
            "new_version": self.new_version,
            "compatibility": self.compatibility,
            "changes": [c.to_dict() for c in self.changes],
        }


def classify_strictness(tighter: bool, looser: bool) -> Compatibility:
    """A guarantee that got stronger is forward, weaker backward, both (or neither
    comparable) breaking, unchanged full."""
    if tighter and looser:
        return "breaking"
    return "forward" if tighter else ("backward" if looser else "full")


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
