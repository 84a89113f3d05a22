"""The event-time clock of a streaming table: its watermark, and how it moves.

The watermark says up to which event time the table considers its input complete:
``max event time seen − allowed_lateness``. It never moves back. An event whose windows all
end at or before it is *late* (``<dataset>__late``); a window whose end it passes is
*closed* (written once in ``output_mode: append``, never changed again in ``update``).

With ``idle_timeout``, a stream that has not received an event for that long in processing
time lets its watermark advance with processing time, as if event time had kept running
since the last event arrived: ``max event time − allowed_lateness + (now − last arrival)``.
So the last windows of a stream that went quiet close too.

Times are microseconds since the epoch (UTC); processing times are aware datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


def to_micros(at: datetime) -> int:
    """An aware (or UTC naive) datetime as microseconds since the epoch."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def shown(us: int | None) -> str | None:
    """An event time for people and commit metadata (ISO 8601, UTC)."""
    return None if us is None else to_datetime(us).isoformat()


@dataclass(frozen=True)
class Clock:
    """Where a streaming table's event time stands after a batch.

    Attributes:
        watermark: microseconds; None before the first event.
        max_event_time: the greatest event time accepted so far.
        last_arrival: processing time of the newest batch that brought events.
    """

    watermark: int | None = None
    max_event_time: int | None = None
    last_arrival: datetime | None = None

    def advanced(self, batch_max: int | None, lateness: int, now: datetime) -> Clock:
        """After a batch whose newest accepted event is ``batch_max`` (None: none)."""
        if batch_max is None:
            return self
        newest = batch_max if self.max_event_time is None else max(self.max_event_time, batch_max)
        candidate = newest - lateness
        mark = candidate if self.watermark is None else max(self.watermark, candidate)
        return Clock(mark, newest, now)

    def idle_watermark(self, lateness: int, idle_timeout: int, now: datetime) -> int | None:
        """The watermark processing time has moved it to, once the stream has been idle for
        ``idle_timeout`` microseconds (None: not idle, or no event yet)."""
        if self.max_event_time is None or self.last_arrival is None:
            return None
        idle = to_micros(now) - to_micros(self.last_arrival)
        if idle < idle_timeout:
            return None
        candidate = self.max_event_time - lateness + idle
        return candidate if self.watermark is None else max(self.watermark, candidate)

    def to_state(self) -> dict[str, Any]:
        return {
            "watermark": shown(self.watermark),
            "watermark_us": self.watermark,
            "max_event_time": shown(self.max_event_time),
            "max_event_time_us": self.max_event_time,
            "last_arrival": None if self.last_arrival is None else self.last_arrival.isoformat(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Clock:
        arrival = state.get("last_arrival")
        return cls(
            None if state.get("watermark_us") is None else int(state["watermark_us"]),
            None if state.get("max_event_time_us") is None else int(state["max_event_time_us"]),
            None if arrival is None else datetime.fromisoformat(arrival),
        )
