"""``lakeforge dlq replay`` for a REST source: its dead letters re-read from their raw JSON.

A REST dead letter cannot be fetched again (the API has moved on), but it kept its raw
JSON, so it is read again with the source's settings as they are now: a record is cast to
the current ``schema:`` / ``required:``; a bad page's body is read with the current
``records:`` and replays when every one of its records then reads (a body cut at the
dead-letter size cap never does). What reads goes through the dataset's transform, checks
and write as one batch whose commit names the dead letters it replayed, exactly as for
files (``replay.py``); the source's incremental position is not touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from lakeforge.errors import SourceError
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.replay import KIND, dead_letter_id
from lakeforge.sources.rest import RestSource
from lakeforge.sources.rest_records import Entry, read_records


class RestDeadLetterReplay(Source):
    """The pending dead letters of a REST source, as a one-batch source."""

    kind = KIND

    def __init__(self, reader: RestSource, letters: list[dict[str, Any]]) -> None:
        super().__init__(reader.dataset, reader.project_root)
        self.reader = reader
        self.letters = letters
        self.still_unreadable: list[dict[str, Any]] = []
        self.reason = f"dead-letter replay ({len(letters)} record(s))"

    def recover(self, committed: Iterable[dict[str, Any]]) -> None:
        return None

    def fresh(self) -> None:
        return None

    def pending(self, position: Any) -> str | None:
        return self.reason if self.letters else None

    def status(self, position: Any) -> SourceStatus:
        return SourceStatus(KIND, self.dataset, 0, len(self.letters))

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        from lakeforge.sources.dead_letters import unify

        config = self.reader.config
        parts: list[Any] = []
        replayed: list[str] = []
        for letter in self.letters:
            entries = self._entries(letter)
            if entries is not None:
                data, rejected = read_records(entries, dict(config.record_schema), config.required)
                if not rejected and data.num_rows:
                    parts.append(data)
                    ident = dead_letter_id(
                        letter["_lf_batch"], letter["source_file"], letter["line"]
                    )
                    replayed.append(ident)
                    continue
            self.still_unreadable.append(letter)
        if not replayed:
            return
        yield SourceBatch(
            data=unify(parts),
            state={"kind": KIND, "replayed": sorted(replayed)},
            description=f"{len(replayed)} dead letter(s)",
            units=len(replayed),
        )

    def _entries(self, letter: dict[str, Any]) -> list[Entry] | None:
        """The letter's records (one, or a bad page's), or None when they still do not read."""
        raw, origin, line = letter["raw"], letter["source_file"] or "", letter["line"]
        if raw is None:
            return None
        if line is not None:  # a record
            try:
                record = json.loads(raw)
            except ValueError:
                return None
            return [(record if isinstance(record, dict) else {"value": record}, origin, line)]
        try:  # a bad page: its body, read with the records: setting as it is now
            records = self.reader.page_records(raw)
        except SourceError:
            return None
        return [(r, origin, i) for i, r in enumerate(records)]
