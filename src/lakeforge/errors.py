"""Error hierarchy.

Every error Lakeforge raises derives from :class:`LakeforgeError` and carries structured
context (file, line, dataset, column, expected, found) so the CLI can print one precise
line and a hint. :class:`Transient` / :class:`Terminal` tell the executor whether a retry
can help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Location:
    """Where in a project file an error comes from (1-based line and column)."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        out = self.file
        if self.line is not None:
            out += f":{self.line}"
            if self.column is not None:
                out += f":{self.column}"
        return out


class Transient:
    """Mixin: the failure may go away on retry (network blip, commit conflict)."""


class Terminal:
    """Mixin: retrying cannot help (bad config, bad SQL, bad data)."""


class LakeforgeError(Exception):
    """Root of all Lakeforge errors.

    Args:
        message: what is wrong.
        hint: what to do about it.
        location: file and line the problem comes from, when known.
        dataset: the dataset concerned, when known.
        column: the column concerned, when known.
        expected: what was expected (type, value…).
        found: what was found instead.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        location: Location | None = None,
        dataset: str | None = None,
        column: str | None = None,
        expected: Any = None,
        found: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location
        self.dataset = dataset
        self.column = column
        self.expected = expected
        self.found = found

    @property
    def retryable(self) -> bool:
        return isinstance(self, Transient)

    def __str__(self) -> str:
        parts = []
        if self.location is not None:
            parts.append(f"{self.location}: ")
        if self.dataset is not None and (self.location is None or self.dataset not in self.message):
            parts.append(f"[{self.dataset}] ")
        parts.append(self.message)
        if self.column is not None and self.column not in self.message:
            parts.append(f" (column {self.column!r})")
        if self.expected is not None or self.found is not None:
            parts.append(f" — expected {self.expected}, found {self.found}")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "file": self.location.file if self.location else None,
            "line": self.location.line if self.location else None,
            "dataset": self.dataset,
            "column": self.column,
            "expected": None if self.expected is None else str(self.expected),
            "found": None if self.found is None else str(self.found),
        }


class ConfigError(LakeforgeError, Terminal):
    """A project file (lakeforge.yml, a pipeline, a SQL model's header) is invalid."""


class GraphError(LakeforgeError, Terminal):
    """The dataset graph is invalid: unknown reference, cycle, duplicate name, bad selection."""


class SQLError(LakeforgeError, Terminal):
    """A SQL model does not parse or does not run."""


class SchemaError(LakeforgeError, Terminal):
    """Data does not fit the schema of the target table under its evolution policy."""


class DataError(LakeforgeError, Terminal):
    """Data violates a structural requirement of the write (null key, duplicate key…)."""


class QualityGateFailed(LakeforgeError, Terminal):
    """A blocking quality check failed; nothing was published."""


class SourceError(LakeforgeError):
    """An external source could not be read."""


class TransientSourceError(SourceError, Transient):
    """An external source failed in a way a retry may fix."""


class StorageError(LakeforgeError):
    """Delta storage failed."""


class CommitConflict(StorageError, Transient):
    """A concurrent writer committed first; the write can be retried."""


class TransformError(LakeforgeError, Terminal):
    """User transform code raised an exception."""


class TransientError(LakeforgeError, Transient):
    """A failure a retry may fix. Raise it (``lf.TransientError``) from a transform that
    reads an external system to have the dataset's ``retries`` apply; a transform's
    ``ConnectionError`` or ``TimeoutError`` is treated as one too."""


class PartitionsFailed(LakeforgeError, Terminal):
    """Some partitions of a dataset failed to build (each was retried on its own)."""


class DatasetNotFound(LakeforgeError, Terminal):
    """A dataset name does not exist in the project, or has never been built."""
