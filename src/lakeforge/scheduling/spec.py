"""Configuration of freshness SLAs (a dataset key) and alert channels (``lakeforge.yml``).

Only pydantic models live here: they are part of every project load, so nothing heavy is
imported.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lakeforge.project.durations import parse_duration

Event = Literal["run_failed", "check_failed", "freshness", "stream_lag"]
EVENTS: tuple[Event, ...] = ("run_failed", "check_failed", "freshness", "stream_lag")
Severity = Literal["warn", "error"]
SEVERITY_RANK = {"warn": 1, "error": 2}


def duration_seconds(value: str | float) -> float:
    """Seconds of a duration written ``90s``, ``2h``, ``1h30m``, ``7d`` or as a number."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use e.g. 90s, 30m, 2h or 7d")
    if isinstance(value, int | float):
        return float(value)
    return parse_duration(value).total_seconds()


def _not_a_bool(value: Any) -> Any:
    # YAML reads `yes`/`true` as a bool, which pydantic would take for 1 second.
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use e.g. 90s, 30m, 2h or 7d")
    return value


def _positive_duration(value: str | float | None) -> str | float | None:
    if value is not None and duration_seconds(value) <= 0:
        raise ValueError(f"duration {value!r} must be longer than zero")
    return value


def format_duration(value: str | float) -> str:
    """A duration as written (``2h``), or a number of seconds as ``90s``."""
    return value if isinstance(value, str) else f"{value:g}s"


Duration = Annotated[str | float, BeforeValidator(_not_a_bool), AfterValidator(_positive_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FreshnessSLA(_Strict):
    """How old a dataset's data may get: ``freshness: {warn_after: 2h, error_after: 6h}``.

    Args:
        warn_after: older than this → ``warn``.
        error_after: older than this → ``error``.

    An unpartitioned table's age is the time since its data last changed; a time-partitioned
    table is late when a complete partition is still not built this long after its interval
    ended (see docs/freshness-alerts.md). Not part of the code fingerprint.
    """

    warn_after: Duration | None = None
    error_after: Duration | None = None

    @model_validator(mode="after")
    def _limits(self) -> FreshnessSLA:
        if self.warn_after is None and self.error_after is None:
            raise ValueError("freshness needs warn_after, error_after or both (e.g. 2h, 1d)")
        if (
            self.warn_after is not None
            and self.error_after is not None
            and duration_seconds(self.warn_after) >= duration_seconds(self.error_after)
        ):
            raise ValueError(
                f"freshness warn_after ({format_duration(self.warn_after)}) must be shorter "
                f"than error_after ({format_duration(self.error_after)})"
            )
        return self

    @property
    def warn_seconds(self) -> float | None:
        return None if self.warn_after is None else duration_seconds(self.warn_after)

    @property
    def error_seconds(self) -> float | None:
        return None if self.error_after is None else duration_seconds(self.error_after)

    def describe(self) -> str:
        """``warn 2h, error 6h``."""
        parts = []
        if self.warn_after is not None:
            parts.append(f"warn {format_duration(self.warn_after)}")
        if self.error_after is not None:
            parts.append(f"error {format_duration(self.error_after)}")
        return ", ".join(parts)


class LagSLA(_Strict):
    """How far behind its source a dataset may fall: ``lag_alert: {warn_after: 10000,
    error_after: 1000000}``, in the source's own unit — messages not yet read (Kafka, NATS,
    Redis Streams) or bytes of WAL not yet confirmed (Postgres CDC). Judged after each run
    or micro-batch that reads the source (event ``stream_lag``). Not fingerprinted.
    """

    warn_after: Annotated[int, Field(ge=0)] | None = None
    error_after: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _limits(self) -> LagSLA:
        if self.warn_after is None and self.error_after is None:
            raise ValueError("lag_alert needs warn_after, error_after or both (e.g. 10000)")
        if (
            self.warn_after is not None
            and self.error_after is not None
            and self.warn_after >= self.error_after
        ):
            raise ValueError(
                f"lag_alert warn_after ({self.warn_after}) must be less than error_after "
                f"({self.error_after})"
            )
        return self

    def judge(self, lag: int) -> str | None:
        """``error``, ``warn`` or None (within the limits)."""
        if self.error_after is not None and lag > self.error_after:
            return "error"
        if self.warn_after is not None and lag > self.warn_after:
            return "warn"
        return None


class _Channel(_Strict):
    """Fields every alert channel has.

    Args:
        name: how the channel is named in messages, ``alerts ls`` and the alert state
            (default ``<type>-<position>``, e.g. ``webhook-1``); unique.
        events: the events sent to it (default all).
        min_severity: ``warn`` (default) or ``error``; resolutions follow what was sent.
        repeat_after: re-send a condition still firing after this long (default never).
    """

    name: str | None = Field(default=None, min_length=1, max_length=64)
    events: list[Event] = Field(default_factory=lambda: list(EVENTS), min_length=1)
    min_severity: Severity = "warn"
    repeat_after: Duration | None = None

    @field_validator("events", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def label(self) -> str:
        assert self.name is not None, "channel names are set by AlertChannels validation"
        return self.name

    def wants(self, event: str, severity: str) -> bool:
        """Whether a firing ``event`` of ``severity`` goes to this channel."""
        return (
            event in self.events
            and SEVERITY_RANK.get(severity, 2) >= SEVERITY_RANK[self.min_severity]
        )

    @property
    def repeat_seconds(self) -> float | None:
        return None if self.repeat_after is None else duration_seconds(self.repeat_after)


class WebhookChannel(_Channel):
    """POST the alert as JSON (Slack-compatible ``text`` + a ``lakeforge`` object).

    Args:
        url / url_env: the URL, or the environment variable holding it (keeps secrets out
            of the project); exactly one.
        headers: extra request headers; headers_env: header → environment variable.
        timeout: per request (default 10s).
        retries: retries of a failed request (connection error, 429, 5xx), with backoff.
    """

    type: Literal["webhook"] = "webhook"
    url: str | None = None
    url_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = "10s"
    retries: int = Field(default=2, ge=0, le=5)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookChannel:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("a webhook channel needs exactly one of url or url_env")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("a webhook url must start with http:// or https://")
        return self


class CommandChannel(_Channel):
    """Run a program with the alert JSON on stdin (no shell: the command is split with
    shell rules and executed directly).

    Args:
        command: ``notify-oncall --team data`` or a list of arguments.
        timeout: the program is killed after this long (default 30s).
    """

    type: Literal["command"] = "command"
    command: str | list[str]
    timeout: Duration = "30s"

    @field_validator("command")
    @classmethod
    def _splits(cls, value: str | list[str]) -> str | list[str]:
        try:
            args = shlex.split(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise ValueError(f"command {value!r} cannot be split into arguments: {exc}") from None
        if not args:
            raise ValueError("command is empty")
        return value

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)


class LogChannel(_Channel):
    """Append each alert as one JSON line to a file (default ``.lakeforge/alerts.jsonl``,
    relative paths are relative to the project)."""

    type: Literal["log"] = "log"
    path: str | None = None


AlertChannel = Annotated[WebhookChannel | CommandChannel | LogChannel, Field(discriminator="type")]


def _named(channels: list[Any]) -> list[Any]:
    named = [
        c if c.name is not None else c.model_copy(update={"name": f"{c.type}-{i}"})
        for i, c in enumerate(channels, start=1)
    ]
    names = [c.name for c in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two alert channels are named {duplicates[0]!r}; names must be unique")
    return named


AlertChannels = Annotated[list[AlertChannel], AfterValidator(_named)]


# -- schedules and sensors (scheduling/schedules.py, sensors.py, scheduler.py) -------------

# Names of schedules and sensors written in lakeforge.yml. No ':' — the shorthand on a
# dataset is named `dataset:<name>`, so the two can never collide.
_AUTOMATION_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


def check_cron(expression: str) -> str:
    """``expression`` if croniter accepts it (5 fields, an optional 6th for seconds, or
    ``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly``); else ValueError."""
    from croniter import croniter  # only projects with schedules pay for the import

    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ValueError(
            f"invalid cron expression {expression!r}: use minute hour day-of-month month "
            "day-of-week, e.g. '0 3 * * *' or '*/15 * * * *', or @hourly / @daily / @weekly"
        )
    return expression


def check_timezone(name: str) -> str:
    """``name`` if it is a known IANA zone (``UTC``, ``Europe/Berlin``); else ValueError."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r}: use an IANA name such as UTC or Europe/Berlin"
        ) from None
    return name


def _selection_terms(value: Any) -> Any:
    # `select: tag:gold` is shorthand for `select: [tag:gold]`.
    return [value] if isinstance(value, str) else value


def _interval(value: str | float) -> str | float:
    if duration_seconds(value) < 0:  # duration_seconds also refuses a YAML bool
        raise ValueError(f"interval {value!r} must not be negative")
    return value


Cron = Annotated[str, AfterValidator(check_cron)]
Interval = Annotated[str | float, AfterValidator(_interval)]  # 0 allowed: every evaluation
Timezone = Annotated[str, AfterValidator(check_timezone)]
PoolName = Annotated[str, Field(min_length=1, max_length=64)]


class CronTrigger(_Strict):
    """When a schedule fires, and what its runs look like in the queue.

    Args:
        cron: croniter syntax: ``0 * * * *``, ``*/15 * * * *``, ``@daily`` …
        timezone: the zone the expression is read in (default UTC; daylight-saving
            transitions follow the zone).
        catchup: ticks missed while no scheduler ran: on → one run per missed tick (the
            newest ``max_catchup``); off (default) → one run, for the newest missed tick.
        max_catchup: at most this many missed ticks are queued at once.
        priority: queue priority of the runs (higher first).
        pool: the concurrency pool of the runs; default: a ``tag:<t>`` pool of
            ``pools:`` matching a selected dataset's tag, else ``default``.
    """

    cron: Cron
    timezone: Timezone = "UTC"
    catchup: bool = False
    max_catchup: int = Field(default=24, ge=1, le=10_000)
    priority: int = 0
    pool: PoolName | None = None


def cron_trigger_shorthand(value: Any) -> Any:
    """``schedule: "0 3 * * *"`` on a dataset is shorthand for ``{cron: "0 3 * * *"}``."""
    return {"cron": value} if isinstance(value, str) else value


class ScheduleConfig(CronTrigger):
    """One entry of ``schedules:`` in lakeforge.yml: a cron trigger and what it runs.

    Args:
        name: unique among schedules; part of each tick's queue dedupe key.
        select: what to run, in ``lakeforge run`` selection syntax (a term or a list).
    """

    name: str = Field(pattern=_AUTOMATION_NAME, max_length=64)
    select: list[str] = Field(min_length=1)

    @field_validator("select", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _selection_terms(value)


class SensorConfig(_Strict):
    """One entry of ``sensors:``: a condition evaluated every ``min_interval`` that queues
    a run of ``select`` when it holds. Exactly one of ``files``, ``datasets``, ``python``.

    Args:
        name: unique among sensors.
        files: a glob relative to the project (``**`` recurses): fires when files appear
            or change (new path, size or modification time) since the last evaluation.
        datasets: fires when one of these tables has a new data version (a commit that
            changed rows) since the versions recorded at the last evaluation.
        python: ``module:function`` importable from the project root; the function takes
            a :class:`~lakeforge.scheduling.sensors.SensorContext` and returns a bool or a
            :class:`~lakeforge.scheduling.sensors.RunRequest`.
        select: what to run (required for ``files`` and ``datasets``; a Python sensor may
            name its selection in each ``RunRequest`` instead).
        min_interval: the sensor is evaluated at most this often (default 30s; 0: at every
            evaluation of the scheduler).
        priority / pool: as for schedules.
    """

    name: str = Field(pattern=_AUTOMATION_NAME, max_length=64)
    files: str | None = Field(default=None, min_length=1)
    datasets: list[str] | None = Field(default=None, min_length=1)
    python: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.]+:[A-Za-z0-9_.]+$")
    select: list[str] = Field(default_factory=list)
    min_interval: Interval = "30s"
    priority: int = 0
    pool: PoolName | None = None

    @field_validator("select", "datasets", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _selection_terms(value)

    @model_validator(mode="after")
    def _one_trigger(self) -> SensorConfig:
        given = [k for k in ("files", "datasets", "python") if getattr(self, k) is not None]
        if len(given) != 1:
            found = f" (found {', '.join(given)})" if given else ""
            raise ValueError(f"a sensor needs exactly one of files, datasets or python{found}")
        if self.python is None and not self.select:
            raise ValueError(f"a {given[0]} sensor needs `select`: what to run when it fires")
        if self.files is not None and "://" in self.files:
            raise ValueError(
                "file sensors watch local paths only; an object-store URI is not supported yet"
            )
        return self

    @property
    def kind(self) -> Literal["files", "upstream", "python"]:
        if self.files is not None:
            return "files"
        return "upstream" if self.datasets is not None else "python"

    @property
    def min_interval_seconds(self) -> float:
        return duration_seconds(self.min_interval)


def _unique_names(kind: str) -> Any:
    def check(items: list[Any]) -> list[Any]:
        names = [item.name for item in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"two {kind} are named {duplicates[0]!r}; names must be unique")
        return items

    return AfterValidator(check)


Schedules = Annotated[list[ScheduleConfig], _unique_names("schedules")]
Sensors = Annotated[list[SensorConfig], _unique_names("sensors")]
