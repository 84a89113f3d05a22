"""Re-ingest dead letters, exactly once: ``lakeforge dlq replay DATASET``.

The dead letters of committed batches that have not been replayed yet are read again with
the dataset's file reader — NDJSON lines and CSV rows record by record, whole files from
where they still are — and what now reads goes through the dataset's transform, gate and
write as one batch. That batch's commit names the dead letters it replayed (state
``{"kind": "dlq_replay", "replayed": [...]}``), so the table itself says which ones are
done: a replay that crashed before its commit is simply done again; one that committed is
never repeated. The dead-letter table is not modified; ``dlq ls/show`` derive the replayed
mark from those commits. Records that still do not read stay where they are.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeforge.engines.connection import connect
from lakeforge.errors import ConfigError
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.files import FilesSource

if TYPE_CHECKING:
    from lakeforge.sources.rest_replay import RestDeadLetterReplay

KIND = "dlq_replay"


def dead_letter_id(batch: int, source_file: str | None, line: int | None) -> str:
    """A dead letter's identity: its batch, file and line (empty for a whole file)."""
    return f"{batch}:{source_file or ''}:{'' if line is None else line}"


def replayed_ids(states: Iterable[dict[str, Any]]) -> set[str]:
    """Dead letters named by replay commits (their states, any order)."""
    done: set[str] = set()
    for state in states:
        if state.get("kind") == KIND:
            done.update(state.get("replayed", []))
    return done


def pending_dead_letters(store: Any, dataset: str) -> list[dict[str, Any]]:
    """Dead letters of committed batches not replayed yet, oldest first."""
    from lakeforge.storage.write import dlq_table

    table = dlq_table(dataset)
    if not store.exists(table):
        return []
    infos = list(store.commit_infos(dataset))
    done = replayed_ids(i.source_state for i in infos if i.source_state)
    committed = store.committed_batch(dataset)
    rows = store.read(table).to_table().to_pylist()
    out = [
        r
        for r in rows
        # A dead letter of a batch that never committed belongs to that batch's retry.
        if r["_lf_batch"] <= committed
        and dead_letter_id(r["_lf_batch"], r["source_file"], r["line"]) not in done
    ]
    return sorted(out, key=lambda r: (r["_lf_batch"], r["source_file"] or "", r["line"] or 0))


class DeadLetterReplay(Source):
    """The pending dead letters of one dataset, as a one-batch source."""

    kind = KIND

    def __init__(self, reader: FilesSource, letters: list[dict[str, Any]]) -> None:
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
        from lakeforge.sources import dead_letters

        parts: list[Any] = []
        replayed: list[str] = []
        reread: dict[str, list[int]] = {}  # whole files read again: their signature now
        by_file: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for letter in self.letters:
            whole = letter["line"] is None or letter["raw"] is None
            by_file.setdefault((letter["source_file"] or "", whole), []).append(letter)
        for (rel, whole), letters in by_file.items():
            good, ok = self._read(rel, whole, letters)
            if good is not None and good.num_rows:
                parts.append(good)
            for letter, read in zip(letters, ok, strict=True):
                ident = dead_letter_id(letter["_lf_batch"], letter["source_file"], letter["line"])
                if read:
                    replayed.append(ident)
                    signature = self.reader.signature(rel) if whole else None
                    if signature is not None:
                        reread[rel] = signature
                else:
                    self.still_unreadable.append(letter)
        if not replayed:
            return
        yield SourceBatch(
            data=dead_letters.unify(parts) if parts else self.reader._empty(),
            state={"kind": KIND, "replayed": sorted(replayed), "snapshot": False, "files": reread},
            description=f"{len(replayed)} dead letter(s)",
            units=len(replayed),
        )

    def _read(self, rel: str, whole: bool, letters: list[dict[str, Any]]) -> tuple[Any, list[bool]]:
        """(records that now read, per letter: did it read) for one file's dead letters."""
        import duckdb

        con = connect()
        # The file as it is now (an object is fetched): where whole files are read again,
        # CSV rows find their header, and records their row numbers.
        try:
            with self.reader.local_copy(rel) as full:
                if not whole:
                    return self._read_records(con, rel, full, letters)
                if full is None:  # rejected as a whole, and gone since
                    return None, [False] * len(letters)
                try:
                    data = self.reader._read_files(
                        con, [full], display=self.reader.display(rel, full)
                    )
                except duckdb.Error:
                    return None, [False] * len(letters)
                return data, [True] * len(letters)
        finally:
            con.close()

    def _read_records(
        self, con: Any, rel: str, full: str | None, letters: list[dict[str, Any]]
    ) -> tuple[Any, list[bool]]:
        from lakeforge.sources import dead_letters

        fmt = self.reader.format
        lines = [letter["raw"] for letter in letters]
        header = b""
        if fmt == "csv":
            if full is None:  # the rows need their header to be read
                return None, [False] * len(letters)
            with open(full, "rb") as fh:
                header = fh.readline().rstrip(b"\r\n") + b"\n"
        elif fmt != "ndjson":
            raise ConfigError(f"{self.dataset}: dead letters of {fmt} files are replayed whole")
        handle, temp = tempfile.mkstemp(suffix=".csv" if fmt == "csv" else ".ndjson")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(header + b"\n".join(lines) + b"\n")

            def read(path: str, extra: dict[str, Any]) -> Any:
                return self.reader._read_files(
                    con, [path], extra, display=self.reader.display(rel, path)
                )

            good, bad = dead_letters.salvage(
                con, temp, "replay", fmt, self.reader.config.options, "replay", read
            )
        finally:
            os.unlink(temp)
        offset = 1 if fmt == "csv" else 0  # the header is line 1 of the temporary file
        failed = {int(n) - offset for n in bad.column("line").to_pylist() if n is not None}
        if any(n is None for n in bad.column("line").to_pylist()):
            return None, [False] * len(letters)  # the records as a whole did not read
        ok = [(i + 1) not in failed for i in range(len(letters))]
        row_column = self.reader.config.row_column
        if row_column and good is not None:
            # Each record's ordinal in its file, from the file as it is now (NULL if gone).
            ordinals = None
            if full is not None:
                ordinals = dead_letters.record_ordinals(
                    con, full, fmt, self.reader.config.options, read
                )
            rows = None
            if ordinals is not None:
                last = max(ordinals, default=0)
                found = [
                    dead_letters.ordinal_at(ordinals, int(letter["line"]), last)
                    for letter, read_ok in zip(letters, ok, strict=True)
                    if read_ok
                ]
                rows = None if None in found else [int(n) for n in found if n is not None]
            good = dead_letters.renumber(good, row_column, rows)
        return good, ok


def replay_source(
    project: Any, store: Any, dataset: str
) -> DeadLetterReplay | RestDeadLetterReplay:
    """The replay source of ``dataset`` (its pending dead letters)."""
    from lakeforge.sources import source_of

    ds = project.graph[dataset]
    source = source_of(ds, Path(project.root))
    from lakeforge.sources.rest import RestSource

    if isinstance(source, RestSource):  # re-read from the raw JSON the dead letters kept
        from lakeforge.sources.rest_replay import RestDeadLetterReplay

        return RestDeadLetterReplay(source, pending_dead_letters(store, dataset))
    if not isinstance(source, FilesSource):
        kind = "no" if source is None else f"a {source.kind}"
        raise ConfigError(
            f"{dataset} has {kind} source: only the dead letters of file sources are replayed",
            dataset=dataset,
            hint=None if source is None else source.replay_refusal,
        )
    return DeadLetterReplay(source, pending_dead_letters(store, dataset))
