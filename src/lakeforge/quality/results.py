"""The outcome of one expectation or check, and the failing-row samples it carries."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from lakeforge.metadata.models import CheckResultRecord

DEFAULT_SAMPLE_ROWS = 20
PII_MASK = "***"
_MAX_TEXT = 200  # characters of a sampled text value; a sample is for reading, not a copy


@dataclass
class CheckResult:
    """What one expectation or check found.

    Attributes:
        name: the expectation or check name (unique within a dataset).
        check_type: ``expectation`` or the check type (``not_null``, ``unique`` …).
        origin: ``expectation``, ``check`` or ``contract``.
        severity: ``error`` / ``warn`` for checks; the action for expectations.
        status: ``pass``, ``warn``, ``fail`` (blocks the publish) or ``error`` (could not be
            evaluated: blocks when the severity is ``error``).
        scope: ``batch`` or ``table`` (None for expectations, which are always per row).
        value: the measured value (failing rows, row count, age in seconds, metric …).
        failing: rows that failed, where the check counts rows.
        total: rows evaluated.
        threshold: the rule the value was compared with, as text.
        message: one line a person can act on.
        sample: up to ``DEFAULT_SAMPLE_ROWS`` failing rows (PII masked), JSON-safe.
    """

    name: str
    check_type: str
    origin: str
    severity: str
    status: str
    scope: str | None = None
    value: float | None = None
    failing: int | None = None
    total: int | None = None
    threshold: str | None = None
    message: str = ""
    sample: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        """Whether this result stops the publish."""
        if self.status == "fail":
            return True
        return self.status == "error" and self.severity in ("error", "fail")

    def to_record(
        self, *, run_id: str, task_id: int | None, dataset: str, published: bool, at: dt.datetime
    ) -> CheckResultRecord:
        from lakeforge.metadata.models import CheckResultRecord

        return CheckResultRecord(
            run_id=run_id,
            task_id=task_id,
            dataset=dataset,
            name=self.name,
            check_type=self.check_type,
            origin=self.origin,
            severity=self.severity,
            status=self.status,
            scope=self.scope,
            value=self.value,
            failing=self.failing,
            total=self.total,
            threshold=self.threshold,
            message=self.message,
            sample=self.sample,
            published=published,
            created_at=at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.check_type,
            "origin": self.origin,
            "severity": self.severity,
            "status": self.status,
            "scope": self.scope,
            "value": self.value,
            "failing": self.failing,
            "total": self.total,
            "threshold": self.threshold,
            "message": self.message,
            "sample": self.sample,
        }


def sample_rows(table: pa.Table, pii_columns: set[str]) -> list[dict[str, Any]]:
    """Rows of ``table`` as JSON-safe dicts, PII columns masked and long text shortened."""
    rows = table.to_pylist()
    return [
        {
            key: (PII_MASK if key in pii_columns and value is not None else json_safe(value))
            for key, value in row.items()
        }
        for row in rows
    ]


def json_safe(value: Any) -> Any:
    """A value that ``json.dumps`` accepts and a reader understands."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "…"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return "base64:" + base64.b64encode(value[:_MAX_TEXT]).decode()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)
