"""Configuration of event time on streaming tables: ``event_time``, ``allowed_lateness``,
``window``, ``output_mode``, ``dedup``, ``idle_timeout`` (keys of a dataset's configuration).

Only pydantic models and checks live here: they are part of every project load, so nothing
heavy is imported. What the keys do is in ``operator.py`` and ``docs/streaming.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lakeforge.scheduling.spec import Duration, duration_seconds

if TYPE_CHECKING:
    from lakeforge.graph.spec import DatasetConfig

OutputMode = Literal["append", "update"]
#: The columns Lakeforge adds to a windowed table's input (and its output must keep).
WINDOW_START = "window_start"
WINDOW_END = "window_end"


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # YAML reads `yes` as a bool; pydantic would take it for 1 s
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 10m or 0")
    return value


def _non_negative(value: str | float) -> str | float:
    try:
        seconds = duration_seconds(value)
    except ValueError:
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 10m or 0") from None
    if seconds < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    return value


#: A duration that may be zero (``allowed_lateness: 0``: no event is waited for).
Lateness = Annotated[str | float, BeforeValidator(_not_a_bool), AfterValidator(_non_negative)]


def micros(value: str | float) -> int:
    """A duration in whole microseconds (event times are compared in microseconds)."""
    return round(duration_seconds(value) * 1_000_000)


def _size(value: Any) -> Any:
    from lakeforge.sources.postgres_cdc_config import parse_size

    return parse_size(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hopping(_Strict):
    """Windows of ``size`` starting every ``slide`` (an event is in ``size / slide`` of them)."""

    size: Duration
    slide: Duration

    @model_validator(mode="after")
    def _slide_within_size(self) -> Hopping:
        if micros(self.slide) > micros(self.size):
            raise ValueError(
                f"hopping slide {self.slide} is longer than its size {self.size}: events "
                "between two windows would be in none (use a slide up to the size)"
            )
        return self


class Session(_Strict):
    """Per ``by`` key, events closer than ``gap`` to the previous one are one session."""

    gap: Duration


class Window(_Strict):
    """``window: {tumbling: 1m}`` | ``{hopping: {size: 5m, slide: 1m}}`` |
    ``{session: {gap: 30s}}``, with ``by: [columns]`` (required for sessions).

    Windows are half-open ``[window_start, window_end)`` and aligned to the Unix epoch
    (tumbling and hopping). ``by`` names the columns the transform groups by besides the
    window: a session is per ``by`` key, and ``output_mode: update`` upserts on ``by`` +
    ``window_start`` + ``window_end``.
    """

    tumbling: Duration | None = None
    hopping: Hopping | None = None
    session: Session | None = None
    by: list[str] = Field(default_factory=list)

    @field_validator("by", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_kind(self) -> Window:
        kinds = [k for k in ("tumbling", "hopping", "session") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a window is one of {tumbling: 1m}, {hopping: {size: 5m, slide: 1m}} or "
                f"{{session: {{gap: 30s}}}}; found {', '.join(kinds) or 'none'}"
            )
        if self.session is not None and not self.by:
            raise ValueError(
                "a session window needs by: [columns] (sessions are per key, e.g. by: [user_id])"
            )
        return self

    @property
    def kind(self) -> Literal["tumbling", "hopping", "session"]:
        if self.tumbling is not None:
            return "tumbling"
        return "hopping" if self.hopping is not None else "session"


class Dedup(_Strict):
    """``dedup: {key: event_id, within: 1h}``: an event whose key was seen drops out, as long
    as the first one's event time is within ``within`` of the watermark."""

    key: list[str] = Field(min_length=1)
    within: Duration

    @field_validator("key", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def default_write(data: dict[str, Any]) -> dict[str, Any]:
    """The write of a streaming table that gives none: a merge on ``by`` + the window in
    ``output_mode: update`` (output rows upsert their window), else an append."""
    if data.get("output_mode") != "update" or not isinstance(data.get("window"), dict):
        return {"strategy": "append"}
    by = data["window"].get("by") or []
    keys = [by] if isinstance(by, str) else list(by)
    return {"strategy": "merge", "keys": [*keys, WINDOW_START, WINDOW_END]}


def check_event_time(config: DatasetConfig) -> None:
    """Raise ValueError for event-time keys that do not fit together (at project load)."""
    given = [
        key
        for key, unset in (
            ("allowed_lateness", config.allowed_lateness in (0, "0")),
            ("window", config.window is None),
            ("dedup", config.dedup is None),
            ("idle_timeout", config.idle_timeout is None),
            ("output_mode", config.output_mode == "append"),
        )
        if not unset
    ]
    if config.event_time is None:
        if given:
            raise ValueError(
                f"{', '.join(given)} need(s) event_time: the column holding each event's time"
            )
        return
    if config.mode != "streaming":
        raise ValueError("event_time applies to streaming tables (mode: streaming)")
    if config.output_mode == "update":
        if config.window is None:
            raise ValueError(
                "output_mode: update upserts windows: it needs a window (without one, events "
                "pass through and are appended)"
            )
        if config.window.session is not None:
            raise ValueError(
                "output_mode: update is not available for session windows: sessions merge and "
                "grow, so an upsert keyed on the window would leave the earlier, shorter "
                "sessions in the table; use output_mode: append (a session is written once, "
                "when it closes)"
            )
        if config.write.strategy != "merge":
            raise ValueError(
                "output_mode: update upserts each window's row: write must be a merge (the "
                "default is one on by + window_start + window_end)"
            )
    if config.idle_timeout is not None and config.window is None:
        raise ValueError("idle_timeout closes windows: it needs a window")


class Compaction(_Strict):
    """Background compaction of a streaming table's small files (``compaction:``).

    Args:
        target_file_size: the size compacted files aim at (``128MB``; bytes or a text).
        min_files: compact once the table has at least this many files smaller than half
            the target (each micro-batch adds at least one).
    """

    target_file_size: Annotated[int, BeforeValidator(_size), Field(ge=1 << 20)] = 128 << 20
    min_files: int = Field(default=16, ge=2)


def compaction_shorthand(value: Any) -> Any:
    """``compaction: false`` turns it off (None); ``true`` / absent: the defaults."""
    if value is True:
        return {}
    return None if value is False else value
