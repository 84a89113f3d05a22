"""The alert state (``lf_alerts``) on SQLite: dedup, severity changes, resolutions,
repeat_after, retries of failed deliveries, stale claims, channel filters, two books."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from lakeforge.metadata.store import MetadataStore
from lakeforge.scheduling.alert_book import CLAIM_TTL, AlertBook, Claim, Observation, Outcome
from lakeforge.scheduling.spec import AlertChannel, AlertChannels

T0 = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def channels(*specs: dict[str, Any]) -> list[AlertChannel]:
    """Channels as ``lakeforge.yml`` would declare them (names set by validation)."""
    return TypeAdapter(AlertChannels).validate_python(
        [{"type": "log", "path": "unused.jsonl", **s} for s in specs]
    )


@pytest.fixture
def metadata(tmp_path: Path) -> Iterator[MetadataStore]:
    with MetadataStore(f"sqlite:///{tmp_path / 'm.db'}") as store:
        yield store


def fire(key: str = "orders", severity: str = "error", **kw: Any) -> Observation:
    return Observation("run_failed", key, firing=True, severity=severity, message="boom", **kw)


def clear(key: str = "orders", **kw: Any) -> Observation:
    return Observation("run_failed", key, firing=False, message="built", **kw)


def sent(claims: list[Claim]) -> list[tuple[str, str, str, str | None]]:
    """What the claims would send: (channel, kind, severity, previous severity)."""
    return sorted((c.channel, c.kind, c.alert.severity, c.previous_severity) for c in claims)


def deliver(
    book: AlertBook, now: dt.datetime, *, ok: bool | dict[str, bool] = True
) -> list[tuple[str, str, str, str | None]]:
    """Claim everything owed and settle it: ``ok`` per channel name or for all."""
    claims = book.claim(now)
    book.settle(
        [
            Outcome(c, ok.get(c.channel, True) if isinstance(ok, dict) else ok, "HTTP 500")
            for c in claims
        ],
        now,
    )
    return sent(claims)


def test_the_same_condition_twice_is_one_message(metadata: MetadataStore) -> None:
    book = AlertBook(metadata, channels({"name": "a"}, {"name": "b"}))
    book.observe([fire()], T0)
    assert deliver(book, T0) == [("a", "firing", "error", None), ("b", "firing", "error", None)]
    book.observe([fire()], T0 + MINUTE)
    assert deliver(book, T0 + MINUTE) == []
    # Observed twice in one evaluation: the last observation wins, still one condition.
    book.observe([fire(), fire()], T0 + 2 * MINUTE)
    assert deliver(book, T0 + 2 * MINUTE) == []
    (record,) = book.records()
    assert (record.status, record.count, record.first_fired) == ("firing", 3, T0)
    assert record.last_fired == T0 + 2 * MINUTE and record.pending == []


def test_clear_resolves_once_and_a_new_episode_fires_again(metadata: MetadataStore) -> None:
    book = AlertBook(metadata, channels({"name": "a"}))
    book.observe([fire()], T0)
    deliver(book, T0)
    book.observe([clear(run_id="r2")], T0 + MINUTE)
    assert deliver(book, T0 + MINUTE) == [("a", "resolved", "error", None)]
    book.observe([clear()], T0 + 2 * MINUTE)  # already resolved: nothing more
    assert deliver(book, T0 + 2 * MINUTE) == []
    assert book.records() == []
    (record,) = book.records(status=None)
    assert (record.status, record.resolved_at, record.run_id) == ("resolved", T0 + MINUTE, "r2")
    assert record.message == "built"
    book.observe([fire()], T0 + 3 * MINUTE)
    assert deliver(book, T0 + 3 * MINUTE) == [("a", "firing", "error", None)]
    (again,) = book.records()
    assert (again.first_fired, again.count, again.resolved_at) == (T0 + 3 * MINUTE, 1, None)


def test_a_condition_never_fired_is_not_resolved(metadata: MetadataStore) -> None:
    book = AlertBook(metadata, channels({"name": "a"}))
    book.observe([clear()], T0)
    assert deliver(book, T0) == []
    assert book.records(status=None) == []


def test_severity_change_warn_to_error_and_back(metadata: MetadataStore) -> None:
    book = AlertBook(
        metadata, channels({"name": "all"}, {"name": "pager", "min_severity": "error"})
    )
    book.observe([fire(severity="warn")], T0)
    assert deliver(book, T0) == [("all", "firing", "warn", None)]
    book.observe([fire(severity="error")], T0 + MINUTE)
    # Told channels hear of the escalation; the pager now wants it and hears it first.
    assert deliver(book, T0 + MINUTE) == [
        ("all", "escalated", "error", "warn"),
        ("pager", "firing", "error", None),
    ]
    book.observe([fire(severity="error")], T0 + 2 * MINUTE)
    assert deliver(book, T0 + 2 * MINUTE) == []
    book.observe([fire(severity="warn")], T0 + 3 * MINUTE)
    # Back to warn: the pager does not want warnings and is not told.
    assert deliver(book, T0 + 3 * MINUTE) == [("all", "escalated", "warn", "error")]
    book.observe([fire(severity="error")], T0 + 4 * MINUTE)
    # Error again: the pager was told "error" and never heard otherwise — nothing for it.
    assert deliver(book, T0 + 4 * MINUTE) == [("all", "escalated", "error", "warn")]
    book.observe([clear()], T0 + 5 * MINUTE)
    assert deliver(book, T0 + 5 * MINUTE) == [
        ("all", "resolved", "error", None),
        ("pager", "resolved", "error", None),
    ]


def test_a_severity_change_a_channel_never_heard_of_is_not_announced(
    metadata: MetadataStore,
) -> None:
    book = AlertBook(metadata, channels({"name": "a"}))
    book.observe([fire(severity="warn")], T0)
    assert deliver(book, T0) == [("a", "firing", "warn", None)]
    book.observe([fire(severity="error")], T0 + MINUTE)
    assert deliver(book, T0 + MINUTE, ok=False) == [("a", "escalated", "error", "warn")]
    # Back to warn before the escalation got through: the channel was told "warn" and
    # that is still true, so it is owed nothing (not "WARN (was error)").
    book.observe([fire(severity="warn")], T0 + 2 * MINUTE)
    assert deliver(book, T0 + 2 * MINUTE) == []
    (record,) = book.records()
    assert record.pending == []


def test_an_escalation_on_its_way_when_the_severity_drops_back_is_followed_up(
    metadata: MetadataStore,
) -> None:
    book = AlertBook(metadata, channels({"name": "a"}))
    book.observe([fire(severity="warn")], T0)
    deliver(book, T0)
    book.observe([fire(severity="error")], T0 + MINUTE)
    in_flight = book.claim(T0 + MINUTE)
    assert sent(in_flight) == [("a", "escalated", "error", "warn")]
    book.observe([fire(severity="warn")], T0 + 2 * MINUTE)
    book.settle([Outcome(c, True) for c in in_flight], T0 + 2 * MINUTE)
    # The channel was just told "error" while the condition is back at "warn".
    assert deliver(book, T0 + 3 * MINUTE) == [("a", "escalated", "warn", "error")]
    assert deliver(book, T0 + 4 * MINUTE) == []


def test_resolution_goes_only_to_channels_that_were_told(metadata: MetadataStore) -> None:
    book = AlertBook(
        metadata,
        channels(
            {"name": "told"},
            {"name": "down"},
            {"name": "freshness_only", "events": "freshness"},
            {"name": "pager", "min_severity": "error"},
        ),
    )
    book.observe([fire(severity="warn")], T0)
    assert deliver(book, T0, ok={"down": False}) == [
        ("down", "firing", "warn", None),
        ("told", "firing", "warn", None),
    ]
    book.observe([clear()], T0 + MINUTE)
    # "down" never received the firing: it is dropped, not followed by a lone resolution.
    assert deliver(book, T0 + MINUTE) == [("told", "resolved", "warn", None)]
    assert book.records(status=None)[0].pending == []


def test_repeat_after(metadata: MetadataStore) -> None:
    book = AlertBook(metadata, channels({"name": "a", "repeat_after": "1h"}, {"name": "b"}))
    book.observe([fire()], T0)
    assert len(deliver(book, T0)) == 2
    book.observe([fire()], T0 + 30 * MINUTE)
    assert deliver(book, T0 + 30 * MINUTE) == []
    book.observe([fire()], T0 + 60 * MINUTE)  # exactly repeat_after since it was sent
    assert deliver(book, T0 + 60 * MINUTE) == [("a", "repeat", "error", None)]
    book.observe([fire()], T0 + 61 * MINUTE)
    assert deliver(book, T0 + 61 * MINUTE) == []  # the clock restarts at the repeat
    book.observe([fire()], T0 + 121 * MINUTE)
    assert deliver(book, T0 + 121 * MINUTE) == [("a", "repeat", "error", None)]
    # Repeats follow observations: without one, nothing is re-sent however long it fires.
    assert deliver(book, T0 + 300 * MINUTE) == []


def test_a_failed_delivery_is_retried_by_the_next_evaluation(metadata: MetadataStore) -> None:
    book = AlertBook(metadata, channels({"name": "a"}, {"name": "b"}))
    book.observe([fire()], T0)
    assert deliver(book, T0, ok={"b": False}) == [
        ("a", "firing", "error", None),
        ("b", "firing", "error", None),
    ]
    (record,) = book.records()
    assert record.pending == ["b"]
    assert record.deliveries["b"]["error"] == "HTTP 500"
    assert record.deliveries["b"]["failures"] == 1
    assert record.to_dict()["deliveries"]["a"]["told"] is True
    # The next evaluation observes the same condition: "a" is owed nothing, "b" the firing.
    book.observe([fire()], T0 + MINUTE)
    assert deliver(book, T0 + MINUTE, ok=False) == [("b", "firing", "error", None)]
    assert book.records()[0].deliveries["b"]["failures"] == 2
    # A delivery owed is retried even by an evaluation that observes nothing about it.
    book.observe([fire("other")], T0 + 2 * MINUTE)
    retried = deliver(book, T0 + 2 * MINUTE)
    assert ("b", "firing", "error", None) in retried and len(retried) == 3
    (record, _) = book.records()
    assert record.dataset == "orders" and record.pending == []
    assert record.deliveries["b"]["failures"] == 0 and record.deliveries["b"]["error"] is None


def test_a_stale_claim_is_taken_over(metadata: MetadataStore) -> None:
    book = AlertBook(metadata, channels({"name": "a"}))
    book.observe([fire()], T0)
    lost = book.claim(T0)  # a process that dies while sending
    assert sent(lost) == [("a", "firing", "error", None)]
    assert book.claim(T0 + CLAIM_TTL - dt.timedelta(seconds=1)) == []
    taken = book.claim(T0 + CLAIM_TTL)
    assert sent(taken) == [("a", "firing", "error", None)]
    assert taken[0].token != lost[0].token
    book.settle([Outcome(c, True) for c in taken], T0 + CLAIM_TTL)
    assert book.records()[0].deliveries["a"]["told"] is True
    # The first process comes back and reports a failure: the delivery stays done.
    book.settle([Outcome(c, False, "timed out") for c in lost], T0 + CLAIM_TTL)
    (record,) = book.records()
    assert record.pending == [] and record.deliveries["a"]["error"] is None
    assert deliver(book, T0 + 2 * CLAIM_TTL) == []


def test_resolved_while_the_firing_is_on_its_way(metadata: MetadataStore) -> None:
    book = AlertBook(metadata, channels({"name": "a"}))
    book.observe([fire()], T0)
    in_flight = book.claim(T0)
    book.observe([clear()], T0 + MINUTE)
    assert book.claim(T0 + MINUTE) == []  # nothing was told yet: nothing owed
    book.settle([Outcome(c, True) for c in in_flight], T0 + MINUTE)
    # The firing got through after all: the channel must hear the resolution.
    assert deliver(book, T0 + 2 * MINUTE) == [("a", "resolved", "error", None)]
    assert deliver(book, T0 + 3 * MINUTE) == []


def test_channel_filters_by_event_and_severity(metadata: MetadataStore) -> None:
    book = AlertBook(
        metadata,
        channels(
            {"name": "runs", "events": ["run_failed", "check_failed"]},
            {"name": "fresh", "events": "freshness"},
            {"name": "pager", "min_severity": "error"},
        ),
    )
    book.observe(
        [
            fire("orders", severity="error"),
            Observation("freshness", "daily", firing=True, severity="warn", message="late"),
            Observation("check_failed", "orders", firing=True, subject="not_null(id)"),
        ],
        T0,
    )
    got = sorted((c.channel, c.alert.event, c.alert.subject) for c in book.claim(T0))
    assert got == [
        ("fresh", "freshness", ""),
        ("pager", "check_failed", "not_null(id)"),
        ("pager", "run_failed", ""),
        ("runs", "check_failed", "not_null(id)"),
        ("runs", "run_failed", ""),
    ]


def test_a_removed_channel_is_owed_nothing(metadata: MetadataStore) -> None:
    AlertBook(metadata, channels({"name": "a"}, {"name": "gone"})).observe([fire()], T0)
    book = AlertBook(metadata, channels({"name": "a"}))
    assert deliver(book, T0) == [("a", "firing", "error", None)]
    (record,) = book.records()
    assert record.pending == []


def test_two_books_on_one_store_do_not_send_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    specs = channels({"name": "a"}, {"name": "b"})
    stores = [MetadataStore(url), MetadataStore(url)]
    books = [AlertBook(s, specs) for s in stores]
    barrier = threading.Barrier(2)
    claimed: list[list[Claim]] = [[], []]
    errors: list[BaseException] = []

    def evaluate(i: int) -> None:
        try:
            for step in range(5):  # both see the same conditions, step after step
                now = T0 + step * MINUTE
                observations = [fire(f"d{n}") for n in range(10)]
                if step == 3:
                    observations = [clear(f"d{n}") for n in range(10)]
                barrier.wait(timeout=30)
                books[i].observe(observations, now)
                claims = books[i].claim(now)
                books[i].settle([Outcome(c, True) for c in claims], now)
                claimed[i] += claims
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=evaluate, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in stores:
        s.close()
    assert not errors, errors
    messages = sorted(
        (c.alert.dataset, c.channel, c.kind, c.alert.first_fired) for c in claimed[0] + claimed[1]
    )
    # Per dataset and channel: the firing of step 0, the resolution of step 3 and the
    # firing of the new episode of step 4 — each once, whichever book sent it.
    expected = sorted(
        (f"d{n}", ch, kind, fired)
        for n in range(10)
        for ch in ("a", "b")
        for kind, fired in (("firing", T0), ("resolved", T0), ("firing", T0 + 4 * MINUTE))
    )
    assert messages == expected
