"""A plain-Python model of event time on a streaming table (late split, dedup, watermark,
tumbling / hopping / session windows, append / update), the oracle of the event-time tests.

Times are whole seconds; the model follows docs/streaming.md, not the implementation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

BASE = 1_704_110_400  # 2024-01-01T12:00:00Z


@dataclass(frozen=True)
class Event:
    id: int
    device: str
    ts: int  # seconds since the epoch
    temp: float


@dataclass
class Spec:
    kind: str | None  # tumbling | hopping | session | None (pass-through)
    lateness: int
    size: int = 60
    slide: int = 20
    gap: int = 30
    mode: str = "append"
    within: int | None = None  # dedup on id


@dataclass
class Outcome:
    windows: dict[tuple[str, int, int], tuple[int, float]] = field(default_factory=dict)
    passed: list[int] = field(default_factory=list)  # ids passed through (no window)
    late: list[int] = field(default_factory=list)
    deduplicated: list[int] = field(default_factory=list)
    watermark: int | None = None
    open_events: int = 0  # events the state must still hold
    keys: int = 0  # dedup keys the state must still hold


def fixed_windows(spec: Spec, ts: int) -> list[tuple[int, int]]:
    if spec.kind == "tumbling":
        start = ts - ts % spec.size
        return [(start, start + spec.size)]
    assert spec.kind == "hopping"
    last = ts - ts % spec.slide
    out = []
    start = last
    while start + spec.size > ts:
        out.append((start, start + spec.size))
        start -= spec.slide
    return out


def is_late(spec: Spec, ts: int, watermark: int | None) -> bool:
    if watermark is None:
        return False
    if spec.kind in ("tumbling", "hopping"):
        return max(end for _, end in fixed_windows(spec, ts)) <= watermark
    return ts < watermark


def sessions(spec: Spec, events: list[Event]) -> dict[tuple[str, int, int], list[Event]]:
    out: dict[tuple[str, int, int], list[Event]] = {}
    by_device: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_device[e.device].append(e)
    for device, evs in by_device.items():
        evs.sort(key=lambda e: e.ts)
        current: list[Event] = []
        for e in evs:
            if current and e.ts - current[-1].ts >= spec.gap:
                out[(device, current[0].ts, current[-1].ts + spec.gap)] = current
                current = []
            current.append(e)
        if current:
            out[(device, current[0].ts, current[-1].ts + spec.gap)] = current
    return out


def run(spec: Spec, batches: list[list[Event]]) -> Outcome:
    """Process ``batches`` in order (each a micro-batch, events in arrival order)."""
    out = Outcome()
    watermark: int | None = None
    newest: int | None = None
    keys: dict[int, int] = {}
    pairs: dict[tuple[str, int, int], list[Event]] = defaultdict(list)
    accepted_all: list[Event] = []
    for batch in batches:
        accepted: list[Event] = []
        seen: set[int] = set()
        for e in batch:
            if is_late(spec, e.ts, watermark):
                out.late.append(e.id)
                continue
            if spec.within is not None:
                if e.id in keys or e.id in seen:
                    out.deduplicated.append(e.id)
                    continue
                seen.add(e.id)
            accepted.append(e)
        previous = watermark
        if accepted:
            newest = max([e.ts for e in accepted] + ([newest] if newest is not None else []))
            candidate = newest - spec.lateness
            watermark = candidate if watermark is None else max(watermark, candidate)
        accepted_all.extend(accepted)
        if spec.kind in ("tumbling", "hopping"):
            for e in accepted:
                for start, end in fixed_windows(spec, e.ts):
                    if previous is None or end > previous:
                        pairs[(e.device, start, end)].append(e)
        elif spec.kind is None:
            out.passed.extend(e.id for e in accepted)
        if spec.within is not None:
            keys.update({e.id: e.ts for e in accepted})
            if watermark is not None:
                keys = {k: t for k, t in keys.items() if t >= watermark - spec.within}
    out.watermark = watermark
    out.keys = len(keys)
    if spec.kind == "session":
        pairs = defaultdict(list, sessions(spec, accepted_all))
    for (device, start, end), evs in pairs.items():
        closed = watermark is not None and end <= watermark
        if spec.mode == "append" and not closed:
            continue
        out.windows[(device, start, end)] = (
            len(evs),
            round(sum(e.temp for e in evs) / len(evs), 6),
        )
    if spec.kind in ("tumbling", "hopping"):
        out.open_events = sum(
            1
            for e in accepted_all
            if watermark is None or max(end for _, end in fixed_windows(spec, e.ts)) > watermark
        )
    elif spec.kind == "session":
        out.open_events = sum(
            len(evs) for (_, _, end), evs in pairs.items() if watermark is None or end > watermark
        )
    return out
