"""The source protocol: what an external system must do to feed a dataset exactly once.

A source yields batches; each batch carries the data and the *state* it consumed. The
executor commits both in one Delta commit (the state in the commit metadata, next to the
app transaction of the batch), so the table itself says what has been ingested. On restart
the source rebuilds its position from the commits (:meth:`Source.recover`): a batch whose
commit landed is never read again, a batch whose commit did not land is read again — into
the same batch number, which Delta's app transaction lets through only once.

A dataset declares its source in its configuration (``source:``) and reads the batch under
the reserved input name ``source``: ``SELECT ... FROM source`` or ``def raw(source): ...``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pyarrow as pa

    from lakeforge.storage.delta import PinnedTable

SOURCE_INPUT = "source"


@dataclass
class SourceBatch:
    """One batch read from a source.

    Attributes:
        data: the records, as Arrow.
        state: JSON-able state committed with the batch (what recovery needs).
        description: what the batch holds, for people (``"3 files, 1.2 MB"``).
        units: how many source units (files, pages, messages) it holds.
        rejected: records that could not be read (``dead_letters.REJECT_SCHEMA``): they go
            to the dataset's dead-letter queue in the same batch.
        transformed: the records are rows of the dataset's own table (a SQL reconcile's
            tombstones), already in its shape: they skip the transform.
    """

    data: pa.Table
    state: dict[str, Any]
    description: str
    units: int = 0
    rejected: pa.Table | None = None
    transformed: bool = False


@dataclass
class SourceStatus:
    """What ``lakeforge sources`` shows about a source."""

    kind: str
    target: str
    consumed: int
    pending: int
    details: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """An external system read incrementally into one dataset."""

    kind: ClassVar[str]
    #: Why ``lakeforge dlq replay`` does not replay this source's dead letters, and what to do
    #: instead (None: no more to say than that only file sources' are replayed).
    replay_refusal: ClassVar[str | None] = None

    def __init__(self, dataset: str, project_root: Path) -> None:
        self.dataset = dataset
        self.project_root = project_root
        #: The dataset's table as the build found it (None: it has none yet, or it is rebuilt
        #: from scratch), bound by the executor before :meth:`batches`, for sources that
        #: compare with what they ingested. None outside a build.
        self.target: Callable[[], PinnedTable | None] | None = None
        #: the name the transform reads each batch under (an upstream's name for a stream
        #: from another dataset)
        self.input_name = SOURCE_INPUT

    @abstractmethod
    def recover(self, committed: Iterable[dict[str, Any]]) -> Any:
        """The source position after the given commits' states (newest first)."""

    @abstractmethod
    def fresh(self) -> Any:
        """The position before anything was read (``--full-refresh`` re-reads everything)."""

    @abstractmethod
    def pending(self, position: Any) -> str | None:
        """Why there is something new to read from ``position``, or None."""

    @abstractmethod
    def batches(self, position: Any) -> Iterator[SourceBatch]:
        """Batches of what is new from ``position``, in order; each batch's ``state`` moves
        the position past it."""

    @abstractmethod
    def status(self, position: Any) -> SourceStatus:
        """A summary for people."""

    @property
    def replaces_table(self) -> bool:
        """Every run reads everything (a full load): its first batch replaces the table."""
        return False

    def changed(self, position: Any) -> list[str]:
        """Units already read that changed since and are not read again (reported)."""
        return []

    def committed(self, state: dict[str, Any]) -> None:
        """Called once the batch that carried ``state`` is committed to the table (or found
        committed already): the moment to acknowledge it to the source system — broker
        acks, a replication slot's confirmed position. Never before: a crash between the
        commit and this call only means the system sends the batch again, which the table's
        batch number then skips. Default: nothing to acknowledge."""
        return None

    def metrics(self) -> dict[str, Any]:
        """Figures of the last :meth:`batches` run for the task's metrics (under
        ``metrics.source``), e.g. a replication slot's lag. Default: none."""
        return {}
