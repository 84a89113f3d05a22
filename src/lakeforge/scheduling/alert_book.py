"""Alert state in the metadata store (``lf_alerts``): dedup, resolution, delivery claims.

One row per condition ``(event, dataset, subject)``. An observation either *fires* the
condition (with a severity) or *clears* it; the row remembers, per channel, what the
channel was told and what it is still owed:

- a new firing episode is owed to every channel that wants it (event filter, severity);
- a condition still firing at the same severity is owed nothing — unless the channel's
  ``repeat_after`` has passed since it was last told;
- a severity change (``warn`` → ``error`` or back) is owed, as ``escalated``, to the told
  channels that want the new severity and were told another one (a channel that never
  heard of a change is not told it was undone);
- a clear is owed, as one ``resolved`` message, to the channels that were told it fired
  (a firing never delivered is dropped rather than followed by a lone resolution).

Delivery is two short transactions around the sends: :meth:`AlertBook.claim` marks what a
process is about to send (so two processes do not both send it), :meth:`AlertBook.settle`
records the outcome. A failed delivery stays owed and is retried by the next evaluation;
a claim older than ``CLAIM_TTL`` (a process that died while sending) is taken over.
Rows are read ``FOR UPDATE`` on PostgreSQL (SQLite serialises writers), and the primary
key makes two processes' first firing of the same condition collide and retry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lakeforge.metadata.models import AlertRow

if TYPE_CHECKING:
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.scheduling.spec import AlertChannel

CLAIM_TTL = timedelta(minutes=5)
_CHUNK = 500  # datasets per IN (...)
_MESSAGE_LIMIT = 2000  # characters of a message kept and sent


@dataclass(frozen=True)
class Observation:
    """One evaluation of a condition: firing (at a severity) or clear."""

    event: str
    dataset: str
    firing: bool
    subject: str = ""
    severity: str = "error"
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.event, self.dataset, self.subject)


@dataclass(frozen=True)
class AlertRecord:
    """An alert condition as stored, detached from its session."""

    event: str
    dataset: str
    subject: str
    status: str
    severity: str
    message: str
    details: dict[str, Any]
    run_id: str | None
    first_fired: datetime
    last_fired: datetime
    resolved_at: datetime | None
    last_sent: datetime | None
    count: int
    deliveries: dict[str, Any]

    @classmethod
    def of(cls, row: AlertRow) -> AlertRecord:
        return cls(
            event=row.event,
            dataset=row.dataset,
            subject=row.subject,
            status=row.status,
            severity=row.severity,
            message=row.message,
            details=dict(row.details or {}),
            run_id=row.run_id,
            first_fired=row.first_fired,
            last_fired=row.last_fired,
            resolved_at=row.resolved_at,
            last_sent=row.last_sent,
            count=row.count,
            deliveries={k: dict(v) for k, v in (row.deliveries or {}).items()},
        )

    @property
    def pending(self) -> list[str]:
        """Channels still owed a message about this condition."""
        return sorted(name for name, d in self.deliveries.items() if d.get("owed"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "dataset": self.dataset,
            "subject": self.subject or None,
            "status": self.status,
            "severity": self.severity,
            "message": self.message,
            "details": self.details,
            "run_id": self.run_id,
            "first_fired": self.first_fired.isoformat(),
            "last_fired": self.last_fired.isoformat(),
            "resolved_at": None if self.resolved_at is None else self.resolved_at.isoformat(),
            "last_sent": None if self.last_sent is None else self.last_sent.isoformat(),
            "count": self.count,
            "pending": self.pending,
            "deliveries": {
                name: {
                    k: d.get(k)
                    for k in ("told", "severity", "owed", "sent_at", "error", "failures")
                }
                for name, d in self.deliveries.items()
            },
        }


@dataclass(frozen=True)
class Claim:
    """One message a process is about to send to one channel."""

    alert: AlertRecord
    channel: str
    kind: str  # firing | escalated | repeat | resolved
    previous_severity: str | None
    token: str


@dataclass(frozen=True)
class Outcome:
    claim: Claim
    ok: bool
    error: str | None = None


class AlertBook:
    """Reads and writes ``lf_alerts`` through a :class:`MetadataStore`."""

    def __init__(self, metadata: MetadataStore, channels: Sequence[AlertChannel]) -> None:
        self.metadata = metadata
        self.channels = {c.label: c for c in channels}

    # -- observing ------------------------------------------------------------------------

    def observe(self, observations: Iterable[Observation], now: datetime) -> None:
        """Apply fire/clear observations (the last one per key wins)."""
        by_key = {o.key: o for o in observations}
        if not by_key:
            return
        datasets = sorted({o.dataset for o in by_key.values()})
        events = sorted({o.event for o in by_key.values()})
        for attempt in (1, 2):
            try:
                with self.metadata.session(write=True) as session:
                    existing: dict[tuple[str, str, str], AlertRow] = {}
                    for chunk in _chunks(datasets):
                        query = (
                            select(AlertRow)
                            .where(AlertRow.dataset.in_(chunk), AlertRow.event.in_(events))
                            .with_for_update()
                        )
                        for stored in session.scalars(query):
                            existing[(stored.event, stored.dataset, stored.subject)] = stored
                    for key, obs in by_key.items():
                        found = existing.get(key)
                        if obs.firing:
                            row = found or AlertRow(
                                event=obs.event, dataset=obs.dataset, subject=obs.subject,
                                status="resolved", count=0, deliveries={},
                            )  # fmt: skip
                            if found is None:
                                session.add(row)
                            self._fire(row, obs, now)
                        elif found is not None and found.status == "firing":
                            self._clear(found, obs, now)
                return
            except IntegrityError:
                # Another process inserted the same condition first: read it and apply again.
                if attempt == 2:
                    raise

    def _fire(self, row: AlertRow, obs: Observation, now: datetime) -> None:
        new_episode = row.status != "firing"
        previous = row.severity
        deliveries = {} if new_episode else _copy(row.deliveries)
        row.status, row.severity = "firing", obs.severity
        row.message = obs.message[:_MESSAGE_LIMIT]
        row.details = dict(obs.details)
        row.run_id = obs.run_id or row.run_id
        row.last_fired, row.resolved_at = now, None
        if new_episode:
            row.first_fired, row.count = now, 1
        else:
            row.count = (row.count or 0) + 1
        changed = not new_episode and previous != obs.severity
        for name, channel in self.channels.items():
            d = deliveries.get(name)
            if not channel.wants(obs.event, obs.severity):
                if d is not None and not d.get("told"):
                    d["owed"] = None  # it no longer wants what it was not told yet
                continue
            # A message in flight whose content is now outdated loses its claim: its
            # delivery is then recorded as "told", and the new message stays owed.
            if d is None or not d.get("told"):
                if d is None or d.get("owed") != "firing" or changed:
                    deliveries[name] = {**(d or {}), "told": False, **_owe("firing")}
            elif changed or d.get("owed") == "escalated":
                # Compare with what this channel was told, not with the last observation:
                # it may have missed a change (not wanted, or not delivered yet).
                told_as = d.get("severity") or previous
                if told_as == obs.severity:
                    if d.get("owed") == "escalated":
                        d.update(_owe(None))  # back to what the channel knows
                elif changed:
                    d.update(_owe("escalated", told_as))
            elif d.get("owed") is None and _repeat_due(d, channel.repeat_seconds, now):
                d.update(_owe("repeat"))
        row.deliveries = deliveries
        row.undelivered = any(d.get("owed") for d in deliveries.values())

    def _clear(self, row: AlertRow, obs: Observation, now: datetime) -> None:
        deliveries = _copy(row.deliveries)
        for d in deliveries.values():
            d.update(_owe("resolved" if d.get("told") else None))
        row.status, row.resolved_at = "resolved", now
        if obs.message:
            row.message = obs.message[:_MESSAGE_LIMIT]
        row.run_id = obs.run_id or row.run_id
        row.deliveries = deliveries
        row.undelivered = any(d.get("owed") for d in deliveries.values())

    # -- delivering -----------------------------------------------------------------------

    def claim(self, now: datetime) -> list[Claim]:
        """Mark every message owed to a configured channel as being sent by this process."""
        claims: list[Claim] = []
        with self.metadata.session(write=True) as session:
            query = select(AlertRow).where(AlertRow.undelivered.is_(True)).with_for_update()
            for row in session.scalars(query):
                deliveries = _copy(row.deliveries)
                taken: list[tuple[str, dict[str, Any]]] = []
                for name, d in deliveries.items():
                    if not d.get("owed"):
                        continue
                    if name not in self.channels:
                        d["owed"] = None  # the channel was removed from lakeforge.yml
                        continue
                    claimed_at = _parse(d.get("claimed_at"))
                    if claimed_at is not None and now - claimed_at < CLAIM_TTL:
                        continue  # another process is sending it
                    d["claim"], d["claimed_at"] = uuid.uuid4().hex, now.isoformat()
                    taken.append((name, d))
                row.deliveries = deliveries
                row.undelivered = any(d.get("owed") for d in deliveries.values())
                record = AlertRecord.of(row)
                claims += [
                    Claim(record, name, d["owed"], d.get("from"), d["claim"]) for name, d in taken
                ]
        return claims

    def settle(self, outcomes: Sequence[Outcome], now: datetime) -> None:
        """Record what was delivered; failures stay owed (retried by the next evaluation)."""
        if not outcomes:
            return
        keys: dict[tuple[str, str, str], list[Outcome]] = {}
        for o in outcomes:
            a = o.claim.alert
            keys.setdefault((a.event, a.dataset, a.subject), []).append(o)
        with self.metadata.session(write=True) as session:
            for (event, dataset, subject), items in keys.items():
                row = session.get(AlertRow, (event, dataset, subject), with_for_update=True)
                if row is None:
                    continue
                deliveries = _copy(row.deliveries)
                for o in items:
                    d = deliveries.setdefault(o.claim.channel, {})
                    current = d.get("claim") == o.claim.token
                    if o.ok:
                        row.last_sent = now
                        d["sent_at"], d["error"], d["failures"] = now.isoformat(), None, 0
                        told_as = o.claim.alert.severity
                        if o.claim.kind != "resolved":
                            d["told"], d["severity"] = True, told_as
                        elif current:
                            d["told"] = False
                        if current:
                            d["owed"], d["from"] = None, None
                        elif row.status == "resolved" and o.claim.kind != "resolved":
                            # Resolved while the firing was on its way: follow it up.
                            d["owed"] = "resolved"
                        elif (
                            row.status == "firing"
                            and o.claim.kind != "resolved"
                            and not d.get("owed")
                            and row.severity != told_as
                            and self._wants(o.claim.channel, row.event, row.severity)
                        ):
                            # The severity changed again while this was on its way.
                            d.update(_owe("escalated", told_as))
                    elif current:
                        d["error"] = o.error
                        d["failures"] = int(d.get("failures") or 0) + 1
                    if current:
                        d["claim"], d["claimed_at"] = None, None
                row.deliveries = deliveries
                row.undelivered = any(d.get("owed") for d in deliveries.values())

    def _wants(self, name: str, event: str, severity: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and channel.wants(event, severity)

    # -- reading --------------------------------------------------------------------------

    def records(self, *, status: str | None = "firing") -> list[AlertRecord]:
        """Alert conditions (firing ones by default), by dataset, event and subject."""
        with self.metadata.session() as session:
            query = select(AlertRow)
            if status is not None:
                query = query.where(AlertRow.status == status)
            rows = session.scalars(
                query.order_by(AlertRow.dataset, AlertRow.event, AlertRow.subject)
            )
            return [AlertRecord.of(r) for r in rows]


def _copy(deliveries: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    # A new object, so the ORM sees the JSON column change.
    return {k: dict(v) for k, v in (deliveries or {}).items()}


def _owe(kind: str | None, previous: str | None = None) -> dict[str, Any]:
    return {"owed": kind, "from": previous, "claim": None, "claimed_at": None}


def _chunks(names: list[str]) -> list[list[str]]:
    return [names[i : i + _CHUNK] for i in range(0, len(names), _CHUNK)]


def _parse(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def _repeat_due(d: dict[str, Any], repeat: float | None, now: datetime) -> bool:
    sent = _parse(d.get("sent_at"))
    return repeat is not None and sent is not None and (now - sent).total_seconds() >= repeat
