"""The ODCS v3 data contract as pydantic models.

A contract follows the Open Data Contract Standard (ODCS) v3: ``apiVersion``, ``kind:
DataContract``, ``id``, ``version`` (semver), ``status``, a ``schema`` of objects with
``properties``, ``quality`` rules and ``slaProperties``. The ODCS field names are accepted
as written; anything vendor-specific goes under ``customProperties``; an unknown key is an
error naming its file and line.

**Binding.** Each schema object binds the dataset named by its ``physicalName`` (else its
``name``); a column is a property's ``physicalName`` (else ``name``). One dataset has at
most one contract.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from lakeforge.errors import Location
from lakeforge.project.yamlconf import line_of
from lakeforge.quality.contracts.column_types import LOGICAL_ACCEPTS, canonical_type, type_family
from lakeforge.quality.contracts.enforcement import ContractRule, RuleBuilder
from lakeforge.quality.contracts.operators import OPERATORS, plain_number
from lakeforge.quality.spec import Check

API_VERSION = "v3.1.0"
LogicalType = Literal[
    "string", "date", "timestamp", "time", "number", "integer", "object", "array", "boolean"
]
Metric = Literal["nullValues", "missingValues", "invalidValues", "duplicateValues", "rowCount"]

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)
_API_VERSION = re.compile(r"^v3\.\d+\.\d+$")
# ODCS severities are free text: the common words are mapped, anything else is refused
# rather than guessed, because the answer decides whether a publish is blocked.
_ERROR_SEVERITIES = {"error", "critical", "blocker", "fatal", "high"}
_WARN_SEVERITIES = {"warning", "warn", "info", "low", "minor"}
_DIMENSIONS = {
    "accuracy": "ac",
    "completeness": "cp",
    "conformity": "cf",
    "consistency": "cs",
    "coverage": "cv",
    "timeliness": "tm",
    "uniqueness": "uq",
}
_LEGACY_RULES = {"nullCheck": "nullValues", "duplicateCount": "duplicateValues"}
_LATENCY = {"latency", "ly", "freshness"}
_DURATION_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), ("s", 1)),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), ("m", 1)),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), ("h", 1)),
    **dict.fromkeys(("d", "day", "days"), ("d", 1)),
    **dict.fromkeys(("w", "wk", "week", "weeks"), ("w", 1)),
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), ("d", 365)),
}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class _Odcs(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class CustomProperty(_Odcs):
    """A vendor-specific key/value (``customProperties``)."""

    key: str = Field(alias="property")
    value: Any
    description: str | None = None


class AuthoritativeDefinition(_Odcs):
    url: str
    type: str
    description: str | None = None


class _Element(_Odcs):
    """Fields every ODCS element may carry."""

    tags: list[str] = Field(default_factory=list)
    custom_properties: list[CustomProperty] = Field(default_factory=list)
    authoritative_definitions: list[AuthoritativeDefinition] = Field(default_factory=list)


class TeamMember(_Element):
    username: str
    name: str | None = None
    description: str | None = None
    role: str | None = None
    date_in: date | str | None = None
    date_out: date | str | None = None
    replaced_by_username: str | None = None


class Team(_Element):
    """ODCS 3.1 team: a name and its members (3.0's bare member list is accepted too)."""

    name: str | None = None
    description: str | None = None
    members: list[TeamMember] = Field(default_factory=list)


class Role(_Odcs):
    role: str
    description: str | None = None
    access: str | None = None
    first_level_approvers: str | None = None
    second_level_approvers: str | None = None
    custom_properties: list[CustomProperty] = Field(default_factory=list)


class SupportChannel(_Odcs):
    channel: str
    url: str | None = None
    description: str | None = None
    tool: str | None = None
    scope: str | None = None
    invitation_url: str | None = None
    custom_properties: list[CustomProperty] = Field(default_factory=list)


class Pricing(_Odcs):
    price_amount: float | None = None
    price_currency: str | None = None
    price_unit: str | None = None


class ContractDescription(_Odcs):
    usage: str | None = None
    purpose: str | None = None
    limitations: str | None = None
    authoritative_definitions: list[AuthoritativeDefinition] = Field(default_factory=list)
    custom_properties: list[CustomProperty] = Field(default_factory=list)


class QualityRule(_Element):
    """One ODCS quality rule: ``text``, ``library`` (a metric), ``sql`` or ``custom``.

    ``library`` and ``sql`` rules compare a measured value with exactly one operator and
    are enforced; ``text`` and ``custom`` rules are documentation for Lakeforge.
    """

    type: Literal["text", "library", "sql", "custom"] | None = None
    name: str | None = None
    description: str | None = None
    metric: Metric | None = None
    rule: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    query: str | None = None
    engine: str | None = None
    implementation: str | dict[str, Any] | None = None
    unit: str | None = None
    must_be: Any = None
    must_not_be: Any = None
    must_be_greater_than: float | None = None
    must_be_greater_or_equal_to: float | None = None
    must_be_less_than: float | None = None
    must_be_less_or_equal_to: float | None = None
    must_be_between: list[float] | None = None
    must_not_be_between: list[float] | None = None
    dimension: str | None = None
    method: str | None = None
    severity: str | None = None
    business_impact: str | None = None
    schedule: str | None = None
    scheduler: str | None = None

    @field_validator("must_be_between", "must_not_be_between")
    @classmethod
    def _pair(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or not value[0] < value[1]):
            raise ValueError("give two numbers, the smaller first, e.g. [10, 20]")
        return value

    @field_validator("must_be", "must_not_be")
    @classmethod
    def _comparable(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, int | float | bool):
            raise ValueError(f"compare with a number (or true/false for SQL), not {value!r}")
        return value

    @field_validator("severity")
    @classmethod
    def _known_severity(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in _ERROR_SEVERITIES | _WARN_SEVERITIES:
            known = ", ".join(sorted(_ERROR_SEVERITIES | _WARN_SEVERITIES))
            raise ValueError(f"severity {value!r} is not one of: {known}")
        return value

    @field_validator("dimension")
    @classmethod
    def _known_dimension(cls, value: str | None) -> str | None:
        if value is not None and value not in (*_DIMENSIONS, *_DIMENSIONS.values()):
            raise ValueError(f"dimension {value!r} is not one of: {', '.join(_DIMENSIONS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> QualityRule:
        kind = self.kind
        operators = [op for op in OPERATORS if getattr(self, op) is not None]
        if kind == "library":
            if self.library_metric is None:
                raise ValueError(
                    f"unknown library rule {self.rule!r}; use `metric:` with one of: "
                    + ", ".join(get_args(Metric))
                )
            if self.unit is not None and self.unit not in ("rows", "percent"):
                raise ValueError(f"unit {self.unit!r} is not rows or percent")
        if kind == "sql" and not self.query:
            raise ValueError("a sql quality rule needs a `query`")
        if kind == "custom" and (not self.engine or self.implementation is None):
            raise ValueError("a custom quality rule needs `engine` and `implementation`")
        if kind in ("library", "sql") and len(operators) != 1:
            found = ", ".join(to_camel(op) for op in operators) or "none"
            raise ValueError(
                f"a {kind} rule needs exactly one operator (mustBe, mustNotBe, "
                f"mustBeGreaterThan, mustBeGreaterOrEqualTo, mustBeLessThan, "
                f"mustBeLessOrEqualTo, mustBeBetween, mustNotBeBetween); found {found}"
            )
        return self

    @property
    def kind(self) -> str:
        if self.type is not None:
            return self.type
        if self.metric is not None or self.rule is not None:
            return "library"
        if self.query is not None:
            return "sql"
        raise ValueError("a quality rule needs a `type` (text, library, sql, custom) or a `metric`")

    @property
    def library_metric(self) -> str | None:
        if self.metric is not None:
            return self.metric
        if self.rule is not None:
            legacy = _LEGACY_RULES.get(self.rule, self.rule)
            return legacy if legacy in get_args(Metric) else None
        return None

    @property
    def operator(self) -> tuple[str, Any]:
        """(operator field name, value) of an enforced rule."""
        for op in OPERATORS:
            if getattr(self, op) is not None:
                return op, getattr(self, op)
        raise ValueError("the rule has no operator")

    @property
    def enforced_severity(self) -> Literal["error", "warn"] | None:
        """``error`` / ``warn`` for enforced rules, None for text and custom ones."""
        if self.kind not in ("library", "sql"):
            return None
        return "warn" if (self.severity or "error").lower() in _WARN_SEVERITIES else "error"


class SchemaProperty(_Element):
    """A property (column) of a schema object."""

    name: str = Field(min_length=1)
    id: str | None = None
    physical_name: str | None = None
    physical_type: str | None = None
    logical_type: LogicalType | None = None
    logical_type_options: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    business_name: str | None = None
    required: bool = False
    unique: bool = False
    primary_key: bool = False
    primary_key_position: int = -1
    partitioned: bool = False
    partition_key_position: int = -1
    classification: str | None = None
    encrypted_name: str | None = None
    transform_source_objects: list[str] = Field(default_factory=list)
    transform_logic: str | None = None
    transform_description: str | None = None
    examples: list[Any] = Field(default_factory=list)
    critical_data_element: bool = False
    relationships: list[dict[str, Any]] = Field(default_factory=list)
    quality: list[QualityRule] = Field(default_factory=list)
    properties: list[SchemaProperty] = Field(default_factory=list)
    items: dict[str, Any] | None = None

    @field_validator("physical_type")
    @classmethod
    def _duckdb_type(cls, value: str | None) -> str | None:
        if value is not None:
            canonical_type(value)
        return value

    @model_validator(mode="after")
    def _types_agree(self) -> SchemaProperty:
        if self.physical_type and self.logical_type:
            family = type_family(canonical_type(self.physical_type))
            if family not in LOGICAL_ACCEPTS[self.logical_type]:
                raise ValueError(
                    f"logicalType {self.logical_type} does not match physicalType "
                    f"{self.physical_type} ({family} family)"
                )
        return self

    @property
    def column(self) -> str:
        return self.physical_name or self.name

    @property
    def duckdb_type(self) -> str | None:
        return canonical_type(self.physical_type) if self.physical_type else None


class SchemaObject(_Element):
    """A schema object (table): binds the dataset named by ``physicalName`` or ``name``."""

    name: str = Field(min_length=1)
    id: str | None = None
    physical_name: str | None = None
    physical_type: str | None = None
    logical_type: Literal["object"] | None = None
    description: str | None = None
    business_name: str | None = None
    data_granularity_description: str | None = None
    properties: list[SchemaProperty] = Field(default_factory=list)
    relationships: list[dict[str, Any]] = Field(default_factory=list)
    quality: list[QualityRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_columns(self) -> SchemaObject:
        seen: set[str] = set()
        for prop in self.properties:
            if prop.column in seen:
                raise ValueError(f"column {prop.column!r} is described twice")
            seen.add(prop.column)
        positions = [p.primary_key_position for p in self.properties if p.primary_key]
        given = [p for p in positions if p >= 1]
        if len(set(given)) != len(given):
            raise ValueError("two primary key columns share a primaryKeyPosition")
        return self

    @property
    def dataset(self) -> str:
        return self.physical_name or self.name

    @property
    def primary_key(self) -> list[str]:
        """Primary key columns ordered by primaryKeyPosition (declaration order otherwise)."""
        keyed = [(i, p) for i, p in enumerate(self.properties) if p.primary_key]
        keyed.sort(
            key=lambda ip: (ip[1].primary_key_position < 1, ip[1].primary_key_position, ip[0])
        )
        return [p.column for _, p in keyed]

    def property_for(self, column: str) -> SchemaProperty | None:
        return next((p for p in self.properties if p.column == column), None)


class SlaProperty(_Odcs):
    """One ``slaProperties`` entry; ``latency`` (or ``freshness``) is enforced."""

    key: str = Field(alias="property")
    value: str | int | float | bool | None
    value_ext: str | int | float | bool | None = None
    unit: str | None = None
    element: str | None = None
    driver: str | None = None
    description: str | None = None
    scheduler: str | None = None
    schedule: str | None = None

    @model_validator(mode="after")
    def _latency_measurable(self) -> SlaProperty:
        if self.is_latency:
            if isinstance(self.value, bool) or not isinstance(self.value, int | float):
                raise ValueError(f"{self.key} needs a number as value, e.g. value: 4, unit: h")
            if self.value <= 0:
                raise ValueError(f"{self.key} must be positive")
            if (self.unit or "").lower() not in _DURATION_UNITS:
                raise ValueError(f"{self.key} needs a unit: s, m, h, d, w or y")
        return self

    @property
    def is_latency(self) -> bool:
        return self.key.lower() in _LATENCY

    def duration(self) -> str:
        """The SLA as a Lakeforge duration (``4d``, ``90m``)."""
        assert isinstance(self.value, int | float)
        unit, factor = _DURATION_UNITS[(self.unit or "").lower()]
        return f"{plain_number(float(self.value) * factor)}{unit}"

    def seconds(self) -> float:
        text = self.duration()
        return float(text[:-1]) * _SECONDS[text[-1]]


class Contract(_Odcs):
    """An ODCS v3 data contract. Load with :func:`load_contract` / :func:`parse_contract`."""

    api_version: str
    kind: Literal["DataContract"]
    id: str = Field(min_length=1)
    version: str
    status: str = Field(min_length=1)
    name: str | None = None
    tenant: str | None = None
    tags: list[str] = Field(default_factory=list)
    servers: list[dict[str, Any]] = Field(default_factory=list)
    data_product: str | None = None
    description: ContractDescription | str | None = None
    domain: str | None = None
    objects: list[SchemaObject] = Field(default_factory=list, alias="schema")
    support: list[SupportChannel] = Field(default_factory=list)
    price: Pricing | None = None
    team: Team | list[TeamMember] | None = None
    roles: list[Role] = Field(default_factory=list)
    sla_default_element: str | None = None
    sla_properties: list[SlaProperty] = Field(default_factory=list)
    authoritative_definitions: list[AuthoritativeDefinition] = Field(default_factory=list)
    custom_properties: list[CustomProperty] = Field(default_factory=list)
    contract_created_ts: datetime | str | None = None

    _file: str = PrivateAttr(default="<contract>")
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    _rules: dict[str, list[ContractRule]] | None = PrivateAttr(default=None)

    @field_validator("api_version")
    @classmethod
    def _v3(cls, value: str) -> str:
        if not _API_VERSION.match(value):
            raise ValueError(f"apiVersion {value!r} is not ODCS v3 (e.g. {API_VERSION})")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _semver(cls, value: Any) -> Any:
        if not isinstance(value, str) or not SEMVER.match(value):
            raise ValueError(
                f"version {value!r} is not semantic versioning; write MAJOR.MINOR.PATCH, "
                "e.g. '1.0.0'"
            )
        return value

    @model_validator(mode="after")
    def _distinct_datasets(self) -> Contract:
        seen: set[str] = set()
        for obj in self.objects:
            if obj.dataset in seen:
                raise ValueError(f"two schema objects bind dataset {obj.dataset!r}")
            seen.add(obj.dataset)
        return self

    @property
    def file(self) -> str:
        """The file the contract was read from (as shown in messages)."""
        return self._file

    def location_of(self, path: tuple[str | int, ...] = ()) -> Location:
        return Location(self._file, line_of(self._lines, path))

    @property
    def datasets(self) -> list[str]:
        """The datasets this contract binds."""
        return [obj.dataset for obj in self.objects]

    @property
    def owner(self) -> str | None:
        """The team name, else the member whose role mentions ``owner``."""
        if isinstance(self.team, Team) and self.team.name:
            return self.team.name
        members = self.team.members if isinstance(self.team, Team) else (self.team or [])
        return next((m.username for m in members if "owner" in (m.role or "").lower()), None)

    def object_for(self, dataset: str) -> SchemaObject | None:
        return next((obj for obj in self.objects if obj.dataset == dataset), None)

    def rules_for(self, dataset: str) -> list[ContractRule]:
        """The checks this contract puts on ``dataset``, each with where it is declared.

        Raises:
            ConfigError: a rule cannot be enforced (:func:`parse_contract` finds these at
                load time).
        """
        if self._rules is None:
            self._rules = {
                obj.dataset: RuleBuilder(self, i).build() for i, obj in enumerate(self.objects)
            }
        return list(self._rules.get(dataset, []))

    def checks_for(self, dataset: str) -> list[Check]:
        """The checks this contract puts on ``dataset`` (empty when it does not bind it)."""
        return [rule.check for rule in self.rules_for(dataset)]

    def type_violations(self, dataset: str, actual_columns: dict[str, str]) -> list[str]:
        """Columns whose DuckDB type is not of their ``logicalType``'s family.

        Only properties with a logicalType and no physicalType are judged here (a
        physicalType is checked exactly by the contract's schema check, which also reports
        missing columns).

        Args:
            dataset: the dataset.
            actual_columns: column name → DuckDB type name of the data.
        """
        obj = self.object_for(dataset)
        if obj is None:
            return []
        problems = []
        for prop in obj.properties:
            actual = actual_columns.get(prop.column)
            if prop.logical_type is None or prop.physical_type or actual is None:
                continue
            family = type_family(actual)
            if family not in LOGICAL_ACCEPTS[prop.logical_type]:
                problems.append(
                    f"column {prop.column!r} of {dataset}: contract {self.id} says logicalType "
                    f"{prop.logical_type}, the data has {actual} ({family} family)"
                )
        return problems
