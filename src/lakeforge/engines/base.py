"""The engine protocol: run one dataset's transform over pinned inputs, return Arrow.

Engines declare what they can do as class attributes (capabilities are data), so callers
ask ``engine.SUPPORTS_PYTHON_TRANSFORMS`` instead of comparing engine names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import pyarrow as pa

    from lakeforge.graph.partitions import Partition
    from lakeforge.graph.spec import Dataset
    from lakeforge.storage.delta import PinnedTable


@dataclass(frozen=True)
class TransformContext:
    """What a Python transform receives in its ``context`` parameter.

    Attributes:
        run_id: the run's id.
        dataset: the dataset being built.
        started_at: the run's start time (UTC).
        full_refresh: whether the table is rebuilt from scratch.
        input_versions: the Delta version each input is pinned to.
        vars: the project's ``vars`` from lakeforge.yml.
        partition: the partition being built (partitioned datasets): ``.key``, and
            ``.start``/``.end`` (time partitions) or ``.value`` (static ones).
    """

    run_id: str
    dataset: str
    started_at: datetime
    full_refresh: bool = False
    input_versions: dict[str, int] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    partition: Partition | None = None


class Engine(Protocol):
    """A transform engine."""

    name: ClassVar[str]
    SUPPORTS_PYTHON_TRANSFORMS: ClassVar[bool]
    SUPPORTS_ZERO_COPY_ARROW: ClassVar[bool]
    SQL_DIALECT: ClassVar[str]

    def transform(
        self,
        ds: Dataset,
        inputs: dict[str, PinnedTable],
        views: list[Dataset],
        context: TransformContext,
    ) -> pa.Table:
        """Run ``ds``'s transform; ``inputs`` maps each stored input to its pinned data and
        ``views`` lists the views it reads through, in dependency order."""
        ...

    def session(self) -> AbstractContextManager[None]:
        """Within: the thread's transforms may share what they set up (a connection) — a
        task's batches."""
        ...

    def query(
        self,
        sql: str,
        tables: dict[str, PinnedTable],
        views: list[Dataset] | None = None,
        context: TransformContext | None = None,
        limit: int | None = None,
    ) -> pa.Table:
        """Run an ad-hoc SELECT over the given tables and views."""
        ...
