"""Contract versions: the semantic-version bump a change needs.

:func:`required_bump` and :func:`check_version_bump`: a change that is not compatible in the
chosen mode (``forward`` by default: existing consumers keep working) needs a major bump; any
other change to schema, quality or SLA needs at least a minor bump; documentation-only
changes need at least a patch bump. Below 1.0.0 the minor number plays the major role
(0.1.0 → 0.2.0 may break), as in Cargo's reading of semver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from lakeforge.quality.contracts.changes import ContractDiff, Mode
from lakeforge.quality.contracts.compatibility import diff_contracts
from lakeforge.quality.contracts.model import SEMVER

if TYPE_CHECKING:
    from lakeforge.quality.contracts.model import Contract

Bump = Literal["major", "minor", "patch", "none"]
_BUMP_RANK = {"none": 0, "patch": 1, "minor": 2, "major": 3}


def parse_version(text: str) -> tuple[int, int, int, str | None]:
    """(major, minor, patch, prerelease) of a semantic version."""
    match = SEMVER.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a semantic version")
    return int(match[1]), int(match[2]), int(match[3]), match[4]


def _version_key(text: str) -> tuple[int, int, int, int, str]:
    major, minor, patch, pre = parse_version(text)
    return major, minor, patch, 0 if pre else 1, pre or ""


def version_bump(old: str, new: str) -> str:
    """How ``new`` differs from ``old``: ``major``/``minor``/``patch``/``none``, or
    ``downgrade``. A prerelease-only change counts as a patch."""
    if _version_key(new) < _version_key(old):
        return "downgrade"
    a, b = parse_version(old), parse_version(new)
    if b[0] != a[0]:
        return "major"
    if b[1] != a[1]:
        return "minor"
    if b[2] != a[2] or b[3] != a[3]:
        return "patch"
    return "none"


def next_version(version: str, bump: str) -> str:
    """The smallest version after ``version`` with the given bump."""
    major, minor, patch, _ = parse_version(version)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def required_bump(diff: ContractDiff, mode: Mode = "forward") -> Bump:
    """The smallest semantic-version bump ``diff`` needs.

    ``major`` when a change is not compatible in ``mode`` (``forward``: consumers on the
    old contract keep working; ``backward``; ``full``: both); ``minor`` for any other
    change to schema, quality rules or SLAs; ``patch`` for documentation-only changes
    (descriptions, classification, owner, status, tags); ``none`` when nothing changed.
    """
    if not diff.changes:
        return "none"
    if diff.incompatible_changes(mode):
        return "major"
    if any(c.category != "docs" for c in diff.changes):
        return "minor"
    return "patch"


def effective_bump(needed: Bump, version: str) -> Bump:
    """``needed`` as it applies to ``version``: below 1.0.0 a major change takes a minor bump
    (0.1.0 → 0.2.0 may break)."""
    if needed == "major" and parse_version(version)[0] == 0:
        return "minor"
    return needed


def check_version_bump(old: Contract, new: Contract, mode: Mode = "forward") -> list[str]:
    """Problems with ``new``'s version given its changes since ``old`` (empty: fine).

    Below 1.0.0 a minor bump is enough for an incompatible change (0.x may break).
    """
    diff = diff_contracts(old, new)
    needed = required_bump(diff, mode)
    actual = version_bump(old.version, new.version)
    if actual == "downgrade":
        return [f"version went down from {old.version} to {new.version}"]
    effective = effective_bump(needed, old.version)
    if needed == "none" or _BUMP_RANK[actual] >= _BUMP_RANK[effective]:
        return []
    suggestion = next_version(old.version, effective)
    if actual == "none":
        return [
            f"the contract changed ({len(diff.changes)} change"
            f"{'s' if len(diff.changes) != 1 else ''}) but its version is still {old.version}; "
            f"this needs a {effective} bump (e.g. {suggestion})"
        ]
    breaking = diff.incompatible_changes(mode)
    if breaking:
        listed = "; ".join(
            f"{c.object}{'.' + c.property if c.property else ''}: {c.kind} ({c.compatibility})"
            for c in breaking
        )
        return [
            f"{len(breaking)} change{'s are' if len(breaking) != 1 else ' is'} not "
            f"{mode}-compatible ({listed}); {old.version} → {new.version} is a {actual} bump, "
            f"this needs a {effective} bump (e.g. {suggestion})"
        ]
    return [
        f"{old.version} → {new.version} is a {actual} bump; changes to schema, quality or SLAs "
        f"need a {effective} bump (e.g. {suggestion})"
    ]
