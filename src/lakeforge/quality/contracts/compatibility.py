"""Compatibility of two versions of a contract (:func:`diff_contracts`).

Classes are those of :mod:`lakeforge.quality.contracts.changes` (backward, forward, full,
breaking):

========================================  =========  =========================================
change                                    class      why
========================================  =========  =========================================
optional column added                     full       old readers ignore it; new readers see
                                                     NULL in old data
required column added                     forward    new readers rely on values old data lacks
column removed                            backward   old readers selecting it fail on new data
column renamed (same property ``id``)     breaking   each side misses a column
optional → required                       forward    old data may hold NULLs
required → optional                       backward   old readers may meet NULLs
type widened (INTEGER → BIGINT, FLOAT →   backward   new readers hold every old value; old
DOUBLE, DECIMAL precision up, DATE →                 readers may overflow on new data
TIMESTAMP, logical integer → number)
type narrowed                             forward    the mirror image
type changed incompatibly                 breaking   neither side reads the other's data
unique / primary key added or tightened   forward    old data may hold duplicates
unique / primary key removed or loosened  backward   old readers may meet duplicates
quality rule or latency SLA added or      forward    a new guarantee old data need not meet
tightened; warning → error
quality rule or latency SLA removed or    backward   new data may break what old readers
loosened; error → warning                            rely on
schema object (dataset) added / removed   forward /  as for a column
                                          backward
description, classification, owner,      full       no reader is affected (classification
status, tags, text rules, other SLAs                 changes are listed: access policies may
                                                     follow them)
========================================  =========  =========================================

Without stable property ids a rename is a removal plus an addition: backward, or breaking
when the new column is required. How quality rules are matched and compared is described in
:mod:`lakeforge.quality.contracts.rule_compatibility`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from lakeforge.quality.contracts.changes import (
    CONTRACT_LEVEL,
    Category,
    Compatibility,
    ContractChange,
    ContractDiff,
    classify_strictness,
    jsonable,
)
from lakeforge.quality.contracts.column_types import (
    LOGICAL_ACCEPTS,
    canonical_type,
    type_change,
    type_family,
)
from lakeforge.quality.contracts.rule_compatibility import diff_rules

if TYPE_CHECKING:
    from lakeforge.quality.contracts.model import (
        Contract,
        SchemaObject,
        SchemaProperty,
        SlaProperty,
    )


def diff_contracts(old: Contract, new: Contract) -> ContractDiff:
    """Classify every change from ``old`` to ``new`` (see the module docstring's table)."""
    changes: list[ContractChange] = []
    for name in (
        "id", "api_version", "name", "status", "domain", "data_product", "tenant",
        "description", "tags", "support", "price", "roles", "servers",
        "authoritative_definitions", "custom_properties", "contract_created_ts",
    ):  # fmt: skip
        changes += _metadata(CONTRACT_LEVEL, None, name, old, new)
    if old.owner != new.owner or jsonable(old.team) != jsonable(new.team):
        changes.append(
            ContractChange(
                CONTRACT_LEVEL, None, "owner_changed", old.owner, new.owner, "full",
                "who answers for the data changed; no reader is affected", "docs",
            )
        )  # fmt: skip
    old_objects = {o.dataset: o for o in old.objects}
    new_objects = {o.dataset: o for o in new.objects}
    for dataset in [*old_objects, *(d for d in new_objects if d not in old_objects)]:
        before, after = old_objects.get(dataset), new_objects.get(dataset)
        if after is None:
            changes.append(
                ContractChange(
                    dataset, None, "object_removed", dataset, None, "backward",
                    "consumers on the old contract read this dataset; it is no longer "
                    "promised", "schema",
                )
            )  # fmt: skip
        elif before is None:
            changes.append(
                ContractChange(
                    dataset, None, "object_added", None, dataset, "forward",
                    "consumers on the new contract expect a dataset old data does not "
                    "promise", "schema",
                )
            )  # fmt: skip
        else:
            changes += _diff_object(before, after)
    changes += _diff_sla(old, new)
    return ContractDiff(old.version, new.version, changes)


def _metadata(
    obj: str, prop: str | None, name: str, old: BaseModel, new: BaseModel
) -> list[ContractChange]:
    before, after = jsonable(getattr(old, name)), jsonable(getattr(new, name))
    if before == after:
        return []
    key = to_camel(name)
    if name == "classification":
        return [
            ContractChange(
                obj, prop, "classification_changed", before, after, "full",
                "readers are unaffected, but access policies may follow the classification",
                "docs",
            )
        ]  # fmt: skip
    category: Category = "schema" if name.startswith(("partition", "physical_type")) else "docs"
    return [
        ContractChange(
            obj, prop, f"{key}_changed", before, after, "full",
            f"{key} is not read by consumers", category,
        )
    ]  # fmt: skip


_OBJECT_METADATA = (
    "name", "id", "physical_type", "description", "business_name", "data_granularity_description",
    "tags", "relationships", "authoritative_definitions", "custom_properties",
)  # fmt: skip
_PROPERTY_METADATA = (
    "name", "description", "business_name", "classification", "encrypted_name",
    "transform_source_objects", "transform_logic", "transform_description", "examples",
    "critical_data_element", "relationships", "logical_type_options", "partitioned",
    "partition_key_position", "tags", "authoritative_definitions", "custom_properties",
    "properties", "items",
)  # fmt: skip


def _diff_object(old: SchemaObject, new: SchemaObject) -> list[ContractChange]:
    ds = new.dataset
    changes: list[ContractChange] = []
    for name in _OBJECT_METADATA:
        changes += _metadata(ds, None, name, old, new)
    matched: list[tuple[SchemaProperty, SchemaProperty]] = []
    old_props, new_props = list(old.properties), list(new.properties)
    for before in list(old_props):  # stable ids first: they reveal renames
        after = next((p for p in new_props if before.id and p.id == before.id), None)
        if after is not None:
            matched.append((before, after))
            old_props.remove(before)
            new_props.remove(after)
    for before in list(old_props):
        after = next((p for p in new_props if p.column == before.column), None)
        if after is not None:
            matched.append((before, after))
            old_props.remove(before)
            new_props.remove(after)
    old_key, new_key = old.primary_key, new.primary_key
    for before in old_props:
        changes.append(
            ContractChange(
                ds, before.column, "column_removed", before.column, None, "backward",
                "consumers on the old contract that select it fail on new data", "schema",
            )
        )  # fmt: skip
    for after in new_props:
        if after.required or after.primary_key:
            changes.append(
                ContractChange(
                    ds, after.column, "column_added", None, after.column, "forward",
                    "a required column: consumers on the new contract expect values that "
                    "old data lacks", "schema",
                )
            )  # fmt: skip
        else:
            changes.append(
                ContractChange(
                    ds, after.column, "column_added", None, after.column, "full",
                    "an optional column: old consumers ignore it, new ones read NULL in old "
                    "data", "schema",
                )
            )  # fmt: skip
        changes += diff_rules(ds, after.column, [], after.quality)
    for before, after in matched:
        changes += _diff_property(ds, before, after)
    if set(old_key) != set(new_key):
        tighter = bool(new_key) and (not old_key or set(new_key) < set(old_key))
        looser = bool(old_key) and (not new_key or set(new_key) > set(old_key))
        if not tighter and not looser:
            tighter = looser = True
        changes.append(
            ContractChange(
                ds, None, "primary_key_changed", old_key or None, new_key or None,
                classify_strictness(tighter, looser),
                "a stronger uniqueness promise old data need not keep" if tighter and not looser
                else "a weaker uniqueness promise: old consumers may meet duplicates"
                if looser and not tighter
                else "a different key: neither side's uniqueness holds for the other",
                "schema",
            )
        )  # fmt: skip
    changes += diff_rules(ds, None, old.quality, new.quality)
    for before in old_props:
        changes += diff_rules(ds, before.column, before.quality, [])
    return changes


def _type_constraint(prop: SchemaProperty) -> tuple[str, str] | None:
    if prop.physical_type:
        return "physical", canonical_type(prop.physical_type)
    if prop.logical_type:
        return "logical", prop.logical_type
    return None


def _diff_property(ds: str, old: SchemaProperty, new: SchemaProperty) -> list[ContractChange]:
    col = new.column
    changes: list[ContractChange] = []
    if old.column != new.column:
        changes.append(
            ContractChange(
                ds, col, "column_renamed", old.column, new.column, "breaking",
                f"property {new.id!r} changed column: old consumers select {old.column!r}, "
                f"new ones {new.column!r}, and neither exists on the other side's data",
                "schema",
            )
        )  # fmt: skip
    for name in _PROPERTY_METADATA:
        # `name` is metadata only while physicalName names the column.
        if name != "name" or (old.physical_name and old.physical_name == new.physical_name):
            changes += _metadata(ds, col, name, old, new)
    changes += _diff_type(ds, col, _type_constraint(old), _type_constraint(new))
    old_required, new_required = old.required or old.primary_key, new.required or new.primary_key
    if old_required != new_required:
        changes.append(
            ContractChange(
                ds, col, "required_changed", old_required, new_required,
                "forward" if new_required else "backward",
                "now required: old data may hold NULLs new consumers do not expect"
                if new_required
                else "now optional: consumers on the old contract may meet NULLs",
                "schema",
            )
        )  # fmt: skip
    if old.unique != new.unique:
        changes.append(
            ContractChange(
                ds, col, "unique_changed", old.unique, new.unique,
                "forward" if new.unique else "backward",
                "now unique: old data may hold duplicates"
                if new.unique
                else "no longer unique: consumers on the old contract may meet duplicates",
                "schema",
            )
        )  # fmt: skip
    changes += diff_rules(ds, col, old.quality, new.quality)
    return changes


def _diff_type(
    ds: str, col: str, old: tuple[str, str] | None, new: tuple[str, str] | None
) -> list[ContractChange]:
    if old == new:
        return []
    label_old, label_new = old and old[1], new and new[1]
    if old is None or new is None:
        comp: Compatibility = "forward" if old is None else "backward"
        why = "a type is now promised" if old is None else "the type is no longer promised"
    elif old[0] == new[0] == "physical":
        relation = type_change(old[1], new[1])
        comp = {"same": "full", "widening": "backward", "narrowing": "forward"}.get(
            relation, "breaking"
        )  # type: ignore[assignment]
        why = {
            "same": "the same type",
            "widening": "widened: new consumers read every old value; old consumers may "
            "overflow on new data",
            "narrowing": "narrowed: old consumers read every new value; new consumers may "
            "overflow on old data",
        }.get(relation, "an incompatible type: neither side can read the other's data")
    else:
        old_families = _families(old)
        new_families = _families(new)
        if old_families == new_families:
            comp = (
                "forward"
                if new[0] == "physical"
                else ("backward" if old[0] == "physical" else "full")
            )
            why = (
                "the same family, now pinned to one type"
                if comp == "forward"
                else "the same family, no longer pinned to one type"
            )
        elif old_families < new_families:
            comp, why = "backward", "widened to a larger type family"
        elif new_families < old_families:
            comp, why = "forward", "narrowed to a smaller type family"
        else:
            comp, why = "breaking", "an incompatible type family"
    if comp == "full":
        return []
    return [ContractChange(ds, col, "type_changed", label_old, label_new, comp, why, "schema")]


def _families(constraint: tuple[str, str]) -> frozenset[str]:
    kind, value = constraint
    if kind == "physical":
        return frozenset({type_family(value)})
    return frozenset(LOGICAL_ACCEPTS[value])


def _diff_sla(old: Contract, new: Contract) -> list[ContractChange]:
    def keyed(contract: Contract) -> dict[tuple[str, str, str], SlaProperty]:
        default = contract.sla_default_element or ""
        out = {}
        for sla in contract.sla_properties:
            name = "latency" if sla.is_latency else sla.key.lower()
            out[(name, (sla.element or default).replace(" ", ""), str(sla.driver))] = sla
        return out

    before, after = keyed(old), keyed(new)
    changes = []
    for key in [*before, *(k for k in after if k not in before)]:
        a, b = before.get(key), after.get(key)
        latency = key[0] == "latency"
        label = f"{key[0]}({key[1]})" if key[1] else key[0]
        show_a = a and (f"{a.value} {a.unit or ''}".strip())
        show_b = b and (f"{b.value} {b.unit or ''}".strip())
        if a is not None and b is not None and jsonable(a) == jsonable(b):
            continue
        if not latency:
            changes.append(
                ContractChange(
                    CONTRACT_LEVEL, None, "sla_changed", show_a, show_b, "full",
                    f"{label}: promised to people, not checked on the data", "sla",
                )
            )  # fmt: skip
        elif a is None:
            changes.append(
                ContractChange(
                    CONTRACT_LEVEL, None, "sla_added", None, show_b, "forward",
                    f"{label}: a new freshness guarantee", "sla",
                )
            )  # fmt: skip
        elif b is None:
            changes.append(
                ContractChange(
                    CONTRACT_LEVEL, None, "sla_removed", show_a, None, "backward",
                    f"{label}: a freshness guarantee is dropped", "sla",
                )
            )  # fmt: skip
        else:
            sa, sb = a.seconds(), b.seconds()
            comp: Compatibility = "forward" if sb < sa else ("backward" if sb > sa else "full")
            changes.append(
                ContractChange(
                    CONTRACT_LEVEL, None, "sla_changed", show_a, show_b, comp,
                    f"{label}: "
                    + {"forward": "tightened", "backward": "loosened", "full": "reworded"}[comp],
                    "sla" if comp != "full" else "docs",
                )
            )  # fmt: skip
    return changes
