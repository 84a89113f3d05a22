"""Dataset specifications.

A dataset's configuration is a pydantic model (:class:`DatasetConfig`) shared by the Python
decorators and SQL model headers; the write strategy is a discriminated union on
``strategy``. :class:`Dataset` binds a configuration to its transform (SQL text or a Python
function), its upstream names and the place it was defined.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lakeforge.errors import Location
from lakeforge.execution.retry import Backoff
from lakeforge.graph.partitions import Partitioning, partitioning_shorthand
from lakeforge.quality.spec import (
    Action,
    Check,
    Expectation,
    expand_check_shorthand,
    expectations_from,
)
from lakeforge.scheduling.spec import (
    CronTrigger,
    Duration,
    FreshnessSLA,
    LagSLA,
    cron_trigger_shorthand,
)
from lakeforge.sources.files import FilesConfig
from lakeforge.sources.http_push import HttpPushConfig
from lakeforge.sources.kafka import KafkaConfig
from lakeforge.sources.mqtt import MqttConfig
from lakeforge.sources.nats_config import NatsConfig
from lakeforge.sources.postgres_cdc_config import PostgresCdcConfig
from lakeforge.sources.redis_streams import RedisStreamsConfig
from lakeforge.sources.rest import RestConfig
from lakeforge.sources.sql_db import SqlConfig
from lakeforge.streaming.spec import (
    Compaction,
    Dedup,
    Lateness,
    OutputMode,
    Window,
    check_event_time,
    compaction_shorthand,
    default_write,
)

Layer = Literal["bronze", "silver", "gold"]
SchemaEvolution = Literal["add_columns", "fail", "rescue"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_PARAMETERS = frozenset({"context"})
SOURCE_PARAMETER = "source"  # the batch a dataset's source yields (sources/base.py)
RESCUE_COLUMN = "_rescued_data"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _valid_trigger(value: str | float) -> str | float:
    """``available_now``, or an interval (``30s``, ``1m``, seconds as a number; ``0``: as
    soon as the previous micro-batch ends)."""
    if value == "available_now":
        return value
    from lakeforge.scheduling.spec import duration_seconds

    try:
        seconds = duration_seconds(value)
    except ValueError:
        raise ValueError(
            f"invalid trigger {value!r}: use available_now or an interval such as 30s, 1m"
        ) from None
    if seconds < 0:
        raise ValueError(f"trigger interval {value!r} must not be negative")
    return value


Trigger = Annotated[str | float, AfterValidator(_valid_trigger)]


class StreamFrom(_Strict):
    """How a streaming table reads an upstream dataset incrementally (``stream_from``).

    Args:
        dataset: the input read as a stream (default: the table's only input); its other
            inputs are read whole, at the version current when each micro-batch starts.
        max_versions_per_batch: upstream versions read per micro-batch (at least one).
        skip_change_commits: ignore upstream versions that rewrite or delete rows (a merge,
            an overwrite) instead of failing; appends are always read.
    """

    dataset: str | None = None
    max_versions_per_batch: int = Field(default=100, ge=1)
    skip_change_commits: bool = False


class Append(_Strict):
    """Append the transform's output to the table on every build."""

    strategy: Literal["append"] = "append"


class Overwrite(_Strict):
    """Replace the whole table with the transform's output (the default)."""

    strategy: Literal["overwrite"] = "overwrite"


class ReplacePartitions(_Strict):
    """Replace exactly the partitions present in the output; others stay untouched."""

    strategy: Literal["replace_partitions"] = "replace_partitions"


class Merge(_Strict):
    """Upsert by key.

    Args:
        keys: columns identifying a row.
        sequence_by: an ordering column; a record never overwrites a row with a greater
            value, and duplicate keys within one batch keep the greatest. Without it,
            duplicate keys within one batch are an error.
        delete_when: SQL condition over the incoming row; matching rows delete the target
            row (and are never inserted).
    """

    strategy: Literal["merge"] = "merge"
    keys: list[str] = Field(min_length=1)
    sequence_by: str | None = None
    delete_when: str | None = None


class SCD2(_Strict):
    """Slowly changing dimension type 2: keep every version of a row.

    Args:
        keys: business key columns.
        track_columns: columns whose change opens a new version (default: all non-key).
        sequence_by: column giving each record's point in time (``valid_from``); default
            is the run's start time.
        valid_from / valid_to / is_current: names of the bookkeeping columns.
        close_missing: the input is a full snapshot; keys absent from it get their current
            version closed.
    """

    strategy: Literal["scd2"] = "scd2"
    keys: list[str] = Field(min_length=1)
    track_columns: list[str] | None = None
    sequence_by: str | None = None
    valid_from: str = "valid_from"
    valid_to: str = "valid_to"
    is_current: str = "is_current"
    close_missing: bool = False


class CDC(_Strict):
    """Apply a change feed (AUTO CDC): inserts, updates, deletes and truncates of a source
    table, ordered by a sequence column, kept as current rows (``scd_type=1``) or as versions
    (``scd_type=2``). Out-of-order and duplicated changes are resolved by ``sequence_by``.

    Args:
        keys: columns identifying a row of the source table.
        sequence_by: orders the changes (an LSN, a commit timestamp); never NULL. An older
            change never overwrites a newer one; replaying changes changes nothing.
        op_column: the column holding the operation; None: no such column (every record is
            an upsert unless ``delete_when`` / ``truncate_when`` say otherwise).
        delete_when: SQL condition marking a delete (default ``op IN ('d', 'D')``).
        truncate_when: SQL condition marking a truncate of the whole table (default
            ``op IN ('t', 'T')``); its keys may be NULL.
        scd_type: 1 keeps the newest row per key; 2 keeps a version per change.
        track_columns: (SCD2) columns whose change opens a new version (default: all but the
            keys and ``sequence_by``); other changes update the current version in place.
        ignore_null_updates: a NULL in a change keeps the value the row already has (for feeds
            that send only the changed columns).
        unchanged_column: a list column of the feed naming, per change, the columns whose
            value it did not carry (Postgres CDC's ``_unchanged_cols``: TOAST values left
            unchanged): they keep the row's value; a genuine NULL still sets NULL. Used when
            the feed has it; never written to the table.
        except_columns: feed columns not written to the table (default: ``op_column``).
        valid_from / valid_to / is_current: (SCD2) names of the bookkeeping columns.
        tombstone_retention: how long a delete is remembered to void older changes that arrive
            later (``7d``); default: until the key is written again or the table truncated.
    """

    strategy: Literal["cdc"] = "cdc"
    keys: list[str] = Field(min_length=1)
    sequence_by: str
    op_column: str | None = "op"
    delete_when: str | None = None
    truncate_when: str | None = None
    scd_type: Literal[1, 2] = 1
    track_columns: list[str] | None = None
    ignore_null_updates: bool = False
    unchanged_column: str | None = "_unchanged_cols"
    except_columns: list[str] | None = None
    valid_from: str = "valid_from"
    valid_to: str = "valid_to"
    is_current: str = "is_current"
    tombstone_retention: Duration | None = None

    @field_validator("keys", "track_columns", "except_columns", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> CDC:
        if self.scd_type == 1:
            scd2_only = {"track_columns", "valid_from", "valid_to", "is_current"}
            given = sorted(scd2_only & self.model_fields_set)
            if given:
                raise ValueError(f"{', '.join(given)} apply to scd_type: 2 (history), not 1")
        kept = {*self.keys, self.sequence_by}
        dropped = sorted(kept & set(self.except_columns or []))
        if dropped:
            raise ValueError(
                f"except_columns cannot drop {', '.join(dropped)}: keys and sequence_by stay in "
                "the table (later changes are matched and ordered against them)"
            )
        if self.scd_type == 2:
            names = [self.valid_from, self.valid_to, self.is_current]
            if len(set(names)) != 3:
                raise ValueError("valid_from, valid_to and is_current must be distinct names")
        return self


WriteStrategy = Annotated[
    Append | Overwrite | ReplacePartitions | Merge | SCD2 | CDC, Field(discriminator="strategy")
]


SourceConfig = Annotated[
    FilesConfig
    | SqlConfig
    | RestConfig
    | RedisStreamsConfig
    | MqttConfig
    | KafkaConfig
    | NatsConfig
    | PostgresCdcConfig
    | HttpPushConfig,
    Field(discriminator="kind"),
]


class ColumnSpec(_Strict):
    """Documentation and typing of one column."""

    type: str | None = None
    description: str | None = None
    pii: bool = False
    nullable: bool = True


class DatasetConfig(_Strict):
    """Everything a user declares about a dataset (decorator kwargs or SQL header)."""

    name: str | None = None
    kind: Literal["table", "view"] = "table"
    layer: Layer | None = None
    description: str | None = None
    owner: str | None = None
    tags: list[str] = Field(default_factory=list)
    columns: dict[str, ColumnSpec] = Field(default_factory=dict)
    partition_by: list[str] = Field(default_factory=list)
    cluster_by: list[str] = Field(default_factory=list)
    schema_evolution: SchemaEvolution = "add_columns"
    # Retries of transient errors: not fingerprinted (they do not shape the data).
    retries: int = Field(default=0, ge=0, le=20)
    backoff: Backoff = "exponential"
    retry_delay: Duration = 0.5
    max_delay: Duration = 30.0
    jitter: bool = True
    write: WriteStrategy = Field(default_factory=Overwrite)
    expect: dict[str, Expectation] = Field(default_factory=dict)
    on_violation: Action = "warn"
    checks: list[Check] = Field(default_factory=list)
    source: SourceConfig | None = None
    partitions: Partitioning | None = None
    freshness: FreshnessSLA | None = None  # not fingerprinted: it does not shape the data
    lag_alert: LagSLA | None = None  # nor this: how far behind its source it may fall
    # Streaming (streaming/): micro-batches as data arrives; not fingerprinted.
    mode: Literal["batch", "streaming"] = "batch"
    trigger: Trigger = "10s"
    stream_from: StreamFrom | None = None
    compaction: Compaction | None = Field(default_factory=Compaction)
    # Event time of a streaming table (streaming/spec.py): fingerprinted, as they decide
    # which rows are written — except idle_timeout, a matter of processing time.
    event_time: str | None = None
    allowed_lateness: Lateness = 0
    window: Window | None = None
    output_mode: OutputMode = "append"
    dedup: Dedup | None = None
    idle_timeout: Duration | None = None
    # When to run it (scheduling/): not fingerprinted either.
    schedule: CronTrigger | None = None
    on_upstream_change: bool = False

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, value: Any) -> Any:
        return cron_trigger_shorthand(value)

    @model_validator(mode="after")
    def _automation_on_tables(self) -> DatasetConfig:
        if self.kind == "view" and (self.schedule is not None or self.on_upstream_change):
            raise ValueError(
                "a view is computed when read: put schedule / on_upstream_change on a table"
            )
        return self

    @field_validator("compaction", mode="before")
    @classmethod
    def _compaction_shorthand(cls, value: Any) -> Any:
        return compaction_shorthand(value)

    @field_validator("stream_from", mode="before")
    @classmethod
    def _stream_from_shorthand(cls, value: Any) -> Any:
        # `stream_from: orders` is shorthand for `stream_from: {dataset: orders}`.
        return {"dataset": value} if isinstance(value, str) else value

    @field_validator("partitions", mode="before")
    @classmethod
    def _partitions_shorthand(cls, value: Any) -> Any:
        return partitioning_shorthand(value)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"dataset name {value!r} must match [A-Za-z_][A-Za-z0-9_]*")
        return value

    @field_validator("tags", "partition_by", "cluster_by", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("columns", mode="before")
    @classmethod
    def _column_shorthand(cls, value: Any) -> Any:
        # `columns: {id: BIGINT}` is shorthand for `{id: {type: BIGINT}}`.
        if isinstance(value, dict):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="before")
    @classmethod
    def _append_from_sources(cls, data: Any) -> Any:
        # A source (or a stream) yields batches of new records: appending them is the natural
        # default.
        # In output_mode: update, windows are upserted: a merge on by + the window.
        if isinstance(data, dict) and data.get("mode") == "streaming" and "write" not in data:
            data = {**data, "write": default_write(data)}
        if not isinstance(data, dict) or data.get("source") is None:
            return data
        source = data["source"]
        if isinstance(source, dict) and "kind" not in source:
            data = {**data, "source": {"kind": "files", **source}}  # files is the default kind
        if "write" not in data:
            data = {**data, "write": {"strategy": "append"}}
        return data

    @field_validator("write", mode="before")
    @classmethod
    def _strategy_shorthand(cls, value: Any) -> Any:
        # `write: append` is shorthand for `write: {strategy: append}`.
        return {"strategy": value} if isinstance(value, str) else value

    @field_validator("expect", mode="before")
    @classmethod
    def _expectation_shorthand(cls, value: Any) -> Any:
        return expectations_from(value)

    @field_validator("checks", mode="before")
    @classmethod
    def _check_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            return value
        return [check for item in value for check in expand_check_shorthand(item)]

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        if self.kind == "view" and (self.partition_by or self.cluster_by):
            raise ValueError("a view is not materialized: it takes no partition_by/cluster_by")
        if isinstance(self.write, ReplacePartitions) and not self.partition_by:
            raise ValueError("write strategy replace_partitions needs partition_by")
        if self.kind == "view" and self.source is not None:
            raise ValueError("a view cannot have a source: declare a table")
        if self.source is not None and self.write.strategy in ("overwrite", "replace_partitions"):
            raise ValueError(
                f"write strategy {self.write.strategy} would make each source batch replace "
                "the one before: use append (the default with a source), merge or scd2"
            )
        if isinstance(self.write, SCD2) and getattr(self.source, "reconcile", None) is not None:
            raise ValueError(
                "source reconcile writes the table's own rows back, flagged _lf_deleted: use an "
                "append or merge write, not scd2"
            )
        if self.kind == "view" and self.freshness is not None:
            raise ValueError("a view is computed when read: put freshness on a table")
        if self.lag_alert is not None and self.source is None:
            raise ValueError("lag_alert applies to a table with a source (its lag behind it)")
        if self.mode == "streaming":
            if self.kind == "view":
                raise ValueError("a view is computed when read: it cannot stream (use a table)")
            if self.write.strategy in ("overwrite", "replace_partitions"):
                raise ValueError(
                    f"write strategy {self.write.strategy} would make each micro-batch replace "
                    "the one before: a streaming table appends (the default), merges or cdc"
                )
            if self.partitions is not None:
                raise ValueError(
                    "a streaming table is built micro-batch by micro-batch: it takes no "
                    "partitions (partition_by still lays out its files)"
                )
        elif self.stream_from is not None:
            raise ValueError("stream_from applies to mode: streaming")
        check_event_time(self)
        if self.kind == "view" and (self.expect or self.checks):
            raise ValueError("a view is not materialized: put expect/checks on a table")
        if isinstance(self.write, SCD2) and any(c.scope == "table" for c in self.checks):
            raise ValueError(
                "checks with scope: table are not available for scd2 writes; check the batch "
                "(the default) or a view of the current rows downstream"
            )
        if self.partitions is not None:
            if self.kind == "view":
                raise ValueError("a view is not materialized: it takes no partitions")
            if self.source is not None:
                raise ValueError(
                    "a dataset with a source is built batch by batch as data arrives: it "
                    "takes no partitions (partition the datasets downstream of it)"
                )
            if self.write.strategy != "overwrite":
                raise ValueError(
                    f"a partitioned dataset replaces one partition per build; write strategy "
                    f"{self.write.strategy} does not apply (remove `write`)"
                )
        names = [c.label for c in self.checks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"two checks are named {duplicates[0]!r}; give one of them a distinct `name`"
            )
        return self


@dataclass
class Dataset:
    """A dataset of the project: its configuration bound to its transform."""

    name: str
    config: DatasetConfig
    location: Location
    inputs: list[str] = field(default_factory=list)
    sql: str | None = None
    function: Callable[..., Any] | None = None
    source_text: str = ""
    external_paths: list[str] = field(default_factory=list)
    takes_context: bool = False

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def is_view(self) -> bool:
        return self.config.kind == "view"

    @property
    def layer(self) -> str | None:
        return self.config.layer

    @property
    def language(self) -> str:
        return "sql" if self.sql is not None else "python"


STRATEGY_NAMES = frozenset(
    m.model_fields["strategy"].default
    for m in (Append, Overwrite, ReplacePartitions, Merge, SCD2, CDC)
)
