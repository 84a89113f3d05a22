"""Enforcement: a contract's schema, quality rules and latency SLAs as Lakeforge checks.

:meth:`Contract.checks_for <lakeforge.quality.contracts.model.Contract.checks_for>` turns the
contract into ordinary :mod:`lakeforge.quality.spec` checks named ``contract:<id>:<rule>``,
blocking unless a rule says ``severity: warning``. Scope: a zero-tolerance row rule
(``required``, ``nullValues mustBe 0`` …) holds for the table when it holds for every batch,
so it checks the batch; uniqueness, row counts, SQL rules, freshness and counted or
percentage tolerances are properties of the whole table, so they check the table as it will
be after the write. ``physicalType`` is checked exactly (as DuckDB spells the type); a
property with only a ``logicalType`` is checked by type family through
:meth:`Contract.type_violations <lakeforge.quality.contracts.model.Contract.type_violations>`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from lakeforge.errors import ConfigError, Location
from lakeforge.quality.contracts.operators import FAILS_WHEN, plain_number
from lakeforge.quality.spec import AcceptedValues as AcceptedValuesCheck
from lakeforge.quality.spec import (
    Check,
    CustomSQL,
    Freshness,
    NotNull,
    Regex,
    RowCount,
    SchemaCheck,
    SqlValue,
    Unique,
)

if TYPE_CHECKING:
    from lakeforge.quality.contracts.model import (
        Contract,
        QualityRule,
        SchemaObject,
        SlaProperty,
    )

_PLACEHOLDER = re.compile(r"\$?\{(object|table|property|column)\}")


@dataclass(frozen=True)
class ContractRule:
    """One check a contract puts on a dataset, and where the contract declares it."""

    check: Check
    contract_id: str
    location: Location
    dimension: str | None = None
    description: str | None = None


def check_sla_elements(contract: Contract) -> None:
    # Objects check their own SLAs when building rules; this also covers a contract
    # whose latency element names no object at all.
    for i, sla in enumerate(contract.sla_properties):
        if sla.is_latency:
            _latency_targets(contract, sla, ("slaProperties", i))


def _latency_targets(
    contract: Contract, sla: SlaProperty, path: tuple[str | int, ...]
) -> list[tuple[SchemaObject, str]]:
    """(object, column) pairs a latency SLA measures, from ``element`` (``table.column``)."""
    element = sla.element or contract.sla_default_element
    if not element:
        raise ConfigError(
            f"{sla.key} SLA needs an element: the timestamp column it measures "
            "(element: table.column)",
            location=contract.location_of(path),
        )
    targets = []
    for item in (part.strip() for part in element.split(",") if part.strip()):
        table, _, column = item.rpartition(".")
        if table:
            obj = next((o for o in contract.objects if table in (o.name, o.dataset)), None)
        else:
            obj = contract.objects[0] if len(contract.objects) == 1 else None
        if obj is None:
            raise ConfigError(
                f"SLA element {item!r} names no schema object of this contract"
                + ("" if table else "; write object.column"),
                location=contract.location_of((*path, "element")),
            )
        prop = next((p for p in obj.properties if column in (p.name, p.column)), None)
        if obj.properties and prop is None:
            raise ConfigError(
                f"SLA element {item!r}: {obj.name} has no property {column!r}",
                location=contract.location_of((*path, "element")),
            )
        targets.append((obj, prop.column if prop else column))
    return targets


# --------------------------------------------------------------------------- checks


_METRIC_LABELS = {
    "nullValues": "null_values",
    "missingValues": "missing_values",
    "invalidValues": "invalid_values",
    "duplicateValues": "duplicate_values",
    "rowCount": "row_count",
}


class _RuleError(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class RuleBuilder:
    """Translates one schema object of a contract into checks."""

    def __init__(self, contract: Contract, index: int) -> None:
        self.contract = contract
        self.obj = contract.objects[index]
        self.base: tuple[str | int, ...] = ("schema", index)
        self.rules: list[ContractRule] = []
        self.names: set[str] = set()

    def build(self) -> list[ContractRule]:
        try:
            self._structure()
            for j, prop in enumerate(self.obj.properties):
                for k, rule in enumerate(prop.quality):
                    self._quality(rule, (*self.base, "properties", j, "quality", k), prop.column)
            for k, rule in enumerate(self.obj.quality):
                self._quality(rule, (*self.base, "quality", k), None)
            self._latency()
        except _RuleError as exc:
            raise ConfigError(
                str(exc), location=self.contract.location_of(exc.path), dataset=self.obj.dataset
            ) from None
        return self.rules

    def _add(
        self,
        check_type: type[Any],
        path: tuple[str | int, ...],
        label: str,
        *,
        source_rule: QualityRule | None = None,
        **fields: Any,
    ) -> None:
        name = f"contract:{label}"  # one contract per dataset: the id adds only noise
        n = 2
        while name in self.names:
            name = f"contract:{label}#{n}"
            n += 1
        self.names.add(name)
        self.rules.append(
            ContractRule(
                check=check_type(name=name, **fields),
                contract_id=self.contract.id,
                location=self.contract.location_of(path),
                dimension=source_rule.dimension if source_rule else None,
                description=source_rule.description if source_rule else None,
            )
        )

    def _structure(self) -> None:
        props = self.obj.properties
        key = self.obj.primary_key
        for j, prop in enumerate(props):
            if prop.required or prop.primary_key:
                field_ = "required" if prop.required else "primaryKey"
                path = (*self.base, "properties", j, field_)
                self._add(NotNull, path, f"required({prop.column})", column=prop.column)
        if key:
            j = next(j for j, p in enumerate(props) if p.primary_key)
            path = (*self.base, "properties", j, "primaryKey")
            self._add(Unique, path, f"primary_key({', '.join(key)})", columns=key, scope="table")
        for j, prop in enumerate(props):
            if prop.unique and key != [prop.column]:
                path = (*self.base, "properties", j, "unique")
                self._add(
                    Unique, path, f"unique({prop.column})", columns=[prop.column], scope="table"
                )
        if props:
            columns = {p.column: p.duckdb_type for p in props}
            self._add(SchemaCheck, (*self.base, "properties"), "schema", columns=columns)

    @staticmethod
    def _thresholds(rule: QualityRule, path: tuple[str | int, ...]) -> list[tuple[str, str]]:
        """(name suffix, failing threshold) pairs for a counted metric; refuses what a
        threshold cannot say."""
        op, value = rule.operator
        pct = "%" if rule.unit == "percent" else ""
        if op == "must_not_be_between":
            raise _RuleError(
                (*path, "mustNotBeBetween"),
                f"mustNotBeBetween is not supported for {rule.library_metric}; use two rules "
                "or a sql rule",
            )
        values = value if op == "must_be_between" else [value]
        if any(isinstance(v, bool) or v < 0 for v in values):
            raise _RuleError(
                (*path, to_camel(op)),
                f"{rule.library_metric} counts rows: compare with a number >= 0",
            )
        if op == "must_be_between":
            return [
                ("[lower]", f"< {plain_number(value[0])}{pct}"),
                ("[upper]", f"> {plain_number(value[1])}{pct}"),
            ]
        return [("", f"{FAILS_WHEN[op]} {plain_number(value)}{pct}")]

    @staticmethod
    def _severity_kw(rule: QualityRule, threshold: str | None) -> dict[str, Any]:
        """The rule itself, its severity and its threshold as check fields."""
        severity = rule.enforced_severity or "error"
        kw: dict[str, Any] = {"source_rule": rule}
        if severity == "warn":
            kw["severity"] = "warn"
        if threshold is not None:
            kw["warn_if" if severity == "warn" else "error_if"] = threshold
        return kw

    @staticmethod
    def _scope(rule: QualityRule) -> str:
        # Zero tolerance on a row rule holds for the table when it holds for each batch;
        # a counted or relative tolerance is about the table as a whole.
        op, value = rule.operator
        zero = rule.unit != "percent" and (op, value) in (
            ("must_be", 0),
            ("must_be_less_than", 1),
            ("must_be_less_or_equal_to", 0),
        )
        return "batch" if zero else "table"

    def _quality(self, rule: QualityRule, path: tuple[str | int, ...], column: str | None) -> None:
        try:
            kind = rule.kind
        except ValueError as exc:
            raise _RuleError(path, str(exc)) from None
        if kind == "sql":
            self._sql(rule, path, column)
            return
        if kind != "library":
            return  # text and custom rules document; Lakeforge does not run them
        metric = rule.library_metric
        label = rule.name or _METRIC_LABELS[str(metric)]
        if metric == "rowCount":
            self._row_count(rule, path, label)
            return
        if metric == "duplicateValues":
            columns = rule.arguments.get("properties") or ([column] if column else None)
            if not columns or not isinstance(columns, list):
                raise _RuleError(
                    path, "duplicateValues on a schema object needs arguments.properties: [col, …]"
                )
            columns = [self._column(c, path) for c in columns]
            for suffix, threshold in self._thresholds(rule, path):
                self._add(
                    Unique,
                    path,
                    f"{label}({', '.join(columns)}){suffix}" if not rule.name else label + suffix,
                    columns=columns,
                    scope="table",
                    **self._severity_kw(rule, threshold),
                )
            return
        if column is None:
            raise _RuleError(
                path, f"{metric} is a property rule: put it under a property's quality"
            )
        title = f"{label}({column})" if not rule.name else label
        if metric == "nullValues":
            for suffix, threshold in self._thresholds(rule, path):
                self._add(
                    NotNull,
                    path,
                    title + suffix,
                    column=column,
                    scope=self._scope(rule),
                    **self._severity_kw(rule, threshold),
                )
        elif metric == "invalidValues":
            valid, pattern = rule.arguments.get("validValues"), rule.arguments.get("pattern")
            if valid is None and pattern is None:
                raise _RuleError(
                    path, "invalidValues needs arguments.validValues or arguments.pattern"
                )
            for suffix, threshold in self._thresholds(rule, path):
                scope = self._scope(rule)
                if valid is not None:
                    if not isinstance(valid, list) or not valid:
                        raise _RuleError(
                            (*path, "arguments", "validValues"),
                            "validValues must be a non-empty list",
                        )
                    self._add(
                        AcceptedValuesCheck,
                        path,
                        title + suffix,
                        column=column,
                        values=valid,
                        scope=scope,
                        **self._severity_kw(rule, threshold),
                    )
                if pattern is not None:
                    try:
                        self._add(
                            Regex,
                            path,
                            title + suffix,
                            column=column,
                            pattern=str(pattern),
                            scope=scope,
                            **self._severity_kw(rule, threshold),
                        )
                    except ValidationError as exc:
                        raise _RuleError(
                            (*path, "arguments", "pattern"),
                            exc.errors()[0]["msg"].removeprefix("Value error, "),
                        ) from None
        elif metric == "missingValues":
            self._missing(rule, path, title, column)

    def _missing(
        self, rule: QualityRule, path: tuple[str | int, ...], title: str, column: str
    ) -> None:
        from sqlglot import exp

        values = rule.arguments.get("missingValues")
        if not isinstance(values, list) or not values:
            raise _RuleError(
                path, "missingValues needs arguments.missingValues: [null, '', 'N/A', …]"
            )
        col = exp.column(column)
        conditions: list[exp.Expression] = []
        if None in values:
            conditions.append(exp.Is(this=col.copy(), expression=exp.Null()))
        literals = [exp.convert(v) for v in values if v is not None]
        if literals:
            conditions.append(exp.In(this=col.copy(), expressions=literals))
        missing = exp.or_(*conditions)
        table = exp.Table(this=exp.to_identifier(self.obj.dataset))
        for suffix, threshold in self._thresholds(rule, path):
            if rule.unit == "percent":
                share = exp.func(
                    "coalesce",
                    exp.Div(
                        this=exp.Mul(
                            this=exp.Literal.number("100.0"),
                            expression=exp.Filter(
                                this=exp.Count(this=exp.Star()),
                                expression=exp.Where(this=missing.copy()),
                            ),
                        ),
                        expression=exp.func(
                            "nullif", exp.Count(this=exp.Star()), exp.Literal.number(0)
                        ),
                    ),
                    exp.Literal.number(0),
                )
                sql = exp.select(share).from_(table.copy()).sql("duckdb")
                self._add(
                    SqlValue,
                    path,
                    title + suffix,
                    sql=sql,
                    scope="table",
                    **self._severity_kw(rule, threshold.removesuffix("%")),
                )
            else:
                sql = exp.select("*").from_(table.copy()).where(missing.copy()).sql("duckdb")
                self._add(
                    CustomSQL,
                    path,
                    title + suffix,
                    sql=sql,
                    scope=self._scope(rule),
                    **self._severity_kw(rule, threshold),
                )

    def _row_count(self, rule: QualityRule, path: tuple[str | int, ...], label: str) -> None:
        op, value = rule.operator
        if rule.unit == "percent":
            raise _RuleError((*path, "unit"), "rowCount is a count: unit percent does not apply")
        bounds: dict[str, int | None] = {"min": None, "max": None}
        if op == "must_be":
            bounds = {"min": math.ceil(value), "max": math.floor(value)}
        elif op == "must_be_greater_than":
            bounds["min"] = math.floor(value) + 1
        elif op == "must_be_greater_or_equal_to":
            bounds["min"] = math.ceil(value)
        elif op == "must_be_less_than":
            bounds["max"] = math.ceil(value) - 1
        elif op == "must_be_less_or_equal_to":
            bounds["max"] = math.floor(value)
        elif op == "must_be_between":
            bounds = {"min": math.ceil(value[0]), "max": math.floor(value[1])}
        else:
            from sqlglot import exp

            count = exp.select(exp.Count(this=exp.Star())).from_(
                exp.Table(this=exp.to_identifier(self.obj.dataset))
            )
            self._sql_value(rule, path, label, count.sql("duckdb"))
            return
        low, high = bounds["min"], bounds["max"]
        if (high is not None and high < 0) or (low is not None and high is not None and low > high):
            raise _RuleError((*path, to_camel(op)), "this rowCount rule can never pass")
        if low is not None and low <= 0:
            low = None
            if high is None:
                return  # any row count passes: nothing to check
        kw = self._severity_kw(rule, None)
        self._add(RowCount, path, label, min=low, max=high, scope="table", **kw)

    def _sql(self, rule: QualityRule, path: tuple[str | int, ...], column: str | None) -> None:
        from sqlglot import exp

        assert rule.query is not None

        def fill(match: re.Match[str]) -> str:
            if match[1] in ("object", "table"):
                return exp.to_identifier(self.obj.dataset).sql("duckdb")
            if column is None:
                raise _RuleError(
                    (*path, "query"), f"{match[0]} needs a property: put the rule under one"
                )
            return exp.to_identifier(column).sql("duckdb")

        sql = _PLACEHOLDER.sub(fill, rule.query).strip().rstrip(";")
        label = rule.name or (f"sql({column})" if column else "sql")
        self._sql_value(rule, path, label, sql)

    def _sql_value(
        self, rule: QualityRule, path: tuple[str | int, ...], label: str, sql: str
    ) -> None:
        from sqlglot import exp

        op, value = rule.operator
        values = value if isinstance(value, list) else [value]
        plain = op != "must_not_be_between" and all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values
        )
        if plain and op == "must_be_between":
            for suffix, threshold in (
                ("[lower]", f"< {plain_number(value[0])}"),
                ("[upper]", f"> {plain_number(value[1])}"),
            ):
                self._add(
                    SqlValue,
                    path,
                    label + suffix,
                    sql=sql,
                    scope="table",
                    **self._severity_kw(rule, threshold),
                )
            return
        if plain:
            threshold = f"{FAILS_WHEN[op]} {plain_number(value)}"
            self._add(
                SqlValue, path, label, sql=sql, scope="table", **self._severity_kw(rule, threshold)
            )
            return
        # Negative bounds, booleans and "not between" are beyond a threshold: the query is
        # wrapped to return 1 when the rule is violated (NULL counts as violated).
        v = exp.column("value")
        lit = [exp.convert(x) for x in values]
        comparisons: dict[str, type[exp.Binary]] = {
            "must_be": exp.EQ,
            "must_not_be": exp.NEQ,
            "must_be_greater_than": exp.GT,
            "must_be_greater_or_equal_to": exp.GTE,
            "must_be_less_than": exp.LT,
            "must_be_less_or_equal_to": exp.LTE,
        }
        passes: Any
        if op in comparisons:
            passes = comparisons[op](this=v, expression=lit[0])
        else:
            passes = exp.Between(this=v, low=lit[0], high=lit[1])
            if op == "must_not_be_between":
                passes = exp.Not(this=passes)
        verdict = exp.Case(
            ifs=[exp.If(this=passes, true=exp.Literal.number(0))], default=exp.Literal.number(1)
        )
        wrapped = f"SELECT {verdict.sql('duckdb')} FROM ({sql}) AS odcs_rule(value)"
        self._add(
            SqlValue, path, label, sql=wrapped, scope="table", **self._severity_kw(rule, "!= 0")
        )

    def _column(self, name: Any, path: tuple[str | int, ...]) -> str:
        prop = next((p for p in self.obj.properties if str(name) in (p.name, p.column)), None)
        if prop is None and self.obj.properties:
            raise _RuleError((*path, "arguments"), f"{self.obj.name} has no property {name!r}")
        return prop.column if prop else str(name)

    def _latency(self) -> None:
        for i, sla in enumerate(self.contract.sla_properties):
            if not sla.is_latency:
                continue
            for obj, column in _latency_targets(self.contract, sla, ("slaProperties", i)):
                if obj is self.obj:
                    self._add(
                        Freshness,
                        ("slaProperties", i),
                        f"freshness({column})",
                        column=column,
                        error_after=sla.duration(),
                        scope="table",
                    )
