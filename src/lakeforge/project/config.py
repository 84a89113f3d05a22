"""``lakeforge.yml``: the project configuration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lakeforge.errors import ConfigError, Location
from lakeforge.execution.retry import Backoff
from lakeforge.project.yamlconf import load_yaml, validate
from lakeforge.scheduling.spec import AlertChannels, Duration, Schedules, Sensors

CONFIG_FILE = "lakeforge.yml"
STATE_DIR = ".lakeforge"


class DatasetDefaults(BaseModel):
    """Defaults applied to every dataset that does not set the key itself."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None = None
    tags: list[str] = Field(default_factory=list)
    retries: int | None = Field(default=None, ge=0, le=20)
    backoff: Backoff | None = None
    retry_delay: Duration | None = None
    max_delay: Duration | None = None
    jitter: bool | None = None
    schema_evolution: Literal["add_columns", "fail", "rescue"] | None = None


class QualityConfig(BaseModel):
    """Project-wide settings of the quality gate.

    Attributes:
        sample_rows: failing rows kept per expectation or check (never all failures).
        on_violation: default action of expectations that set none.
    """

    model_config = ConfigDict(extra="forbid")

    sample_rows: int = Field(default=20, ge=0, le=1000)
    on_violation: Literal["warn", "drop", "quarantine", "fail"] | None = None


class RetentionConfig(BaseModel):
    """How long the metadata store keeps run history (``retention:`` in lakeforge.yml).

    A pruned run goes with its tasks and check results; a run still running, and a run the
    interval ledger names as the last build of a partition, are kept whatever their age.
    Delta tables, their versions and the interval ledger are not touched.

    Attributes:
        runs: delete runs that started longer ago than this (``90d``); default: keep them.
        micro_batches: delete the micro-batch runs of ``lakeforge stream`` that started
            longer ago than this (default ``7d``; ``null``: keep them).
    """

    model_config = ConfigDict(extra="forbid")

    runs: Duration | None = None
    micro_batches: Duration | None = "7d"


class ProjectConfig(BaseModel):
    """The contents of ``lakeforge.yml``.

    Attributes:
        name: project name.
        storage: where Delta tables live: a local path (relative to the project) or a URI.
        storage_options: options passed to delta-rs (object-store credentials, endpoint…).
        metadata_url: SQLAlchemy URL of the metadata store (SQLite under .lakeforge/ by default).
        engine: the transform engine.
        threads: how many datasets build at once (default: number of CPUs).
        defaults: dataset defaults.
        quality: quality-gate settings.
        vars: free-form values for pipelines.
        alerts: alert channels (webhook, command, log); see docs/freshness-alerts.md.
        pools: concurrency pools of queued runs: name → runs at once over all workers;
            a pool named ``tag:<t>`` takes the scheduled runs selecting a dataset tagged t.
        schedules: cron schedules that queue runs (docs/scheduling.md).
        sensors: file, upstream-change and Python sensors that queue runs.
        retention: how long run history is kept (docs/runs.md#retention).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "lakeforge"
    storage: str = "./lakehouse"
    storage_options: dict[str, str] = Field(default_factory=dict)
    metadata_url: str | None = None
    engine: Literal["duckdb"] = "duckdb"
    threads: int | None = Field(default=None, ge=1, le=256)
    defaults: DatasetDefaults = Field(default_factory=DatasetDefaults)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    vars: dict[str, Any] = Field(default_factory=dict)
    alerts: AlertChannels = Field(default_factory=list)
    pools: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    schedules: Schedules = Field(default_factory=list)
    sensors: Sensors = Field(default_factory=list)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)


def load_config(root: Path) -> ProjectConfig:
    """Read ``lakeforge.yml`` under ``root``; environment ``${VAR}`` references are expanded."""
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} in {root}",
            location=Location(str(path)),
            hint="run inside a project folder, pass --project-dir, or create one with "
            "`lakeforge init NAME`",
        )
    text = path.read_text(encoding="utf-8")
    data, lines = load_yaml(os.path.expandvars(text), str(path))
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"{CONFIG_FILE} must be a mapping of keys to values",
            location=Location(str(path), 1),
        )
    return validate(ProjectConfig, data, str(path), lines)


def resolve_storage_root(root: Path, config: ProjectConfig) -> str:
    """The storage root as a URI or absolute path."""
    if "://" in config.storage:
        return config.storage.rstrip("/")
    return str((root / config.storage).resolve())


def resolve_metadata_url(root: Path, config: ProjectConfig) -> str:
    """The metadata store URL (env ``LAKEFORGE_METADATA_URL`` overrides the file)."""
    url = os.environ.get("LAKEFORGE_METADATA_URL") or config.metadata_url
    if url:
        return url
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(state / 'metadata.db').resolve()}"
