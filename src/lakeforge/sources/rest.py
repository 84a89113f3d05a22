"""The REST API source: JSON records from paginated HTTP endpoints, in full or incrementally.

A run requests ``url`` + ``path`` page by page (``paginate``) and takes the records at a
JSON path of each response (``records``). Without ``incremental`` every run is a full load:
all pages are read into **one** batch that replaces the table. With ``incremental`` the
source keeps the highest value of a record field (``updated_at``) and sends it as a query
parameter on the next run; pages are committed ``pages_per_batch`` at a time. Each
incremental batch's state holds the parameter value the pass started from, where the pass
stands (the next cursor, offset, page or URL) and the highest value seen so far, so a run
that dies mid-pass resumes after its last committed batch, with the same parameter.

Ties at the watermark are read exactly once, as by the SQL source: the state also keeps who
the records read *at* the watermark are (``incremental.key``, or a hash of the record), and
a pass skips a record at its parameter value that was read before. An API that treats
``updated_since`` as inclusive sends the newest records again; they are not read again, so
a rerun with nothing new commits nothing — while a record changed in place (no key) or a
new record at the same value is read. A record updated *during* a pass can still come
twice (on two pages): pair the source with a ``merge`` write on the id.

With ``schema:`` records are cast to declared types; records that do not fit, and (with
``on_bad_page: dead_letter``) pages that are not JSON, go to the dead-letter queue
(``rest_records.py``). The configuration is in ``rest_config.py``; HTTP (rate limit,
retries, redaction of secrets) in ``rest_http.py``.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lakeforge.errors import SourceError
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.rest_config import Auth, Incremental, Pagination, RestConfig
from lakeforge.sources.rest_http import Http, Response, shown
from lakeforge.sources.rest_records import MISSING, Entry, Reject, at_path, read_records, record_id

# The configuration lives in rest_config.py; it is imported from here too.
__all__ = ["Auth", "Incremental", "Pagination", "Position", "RestConfig", "RestSource"]

_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


@dataclass
class Position:
    """Where the source stands.

    ``since``: the parameter value the current pass sends; ``resume``: where an unfinished
    pass continues (None: the pass is complete); ``watermark``: the highest field value seen;
    ``at_watermark``: who the records read at the watermark are (``record_id``);
    ``at_since``: in an unfinished pass, who the records read at ``since`` before it are.
    """

    since: Any = None
    resume: Any = None
    watermark: Any = None
    loads: int = 0
    at_watermark: set[str] = field(default_factory=set)
    at_since: set[str] = field(default_factory=set)


@dataclass
class _Page:
    records: list[dict[str, Any]]
    after: Any  # where the next page is (None: this was the last page)
    origin: str = ""  # the page's URL, secrets masked
    bad: Reject | None = None  # the body, when the page could not be read (dead_letter)
    kept: list[int] | None = None  # indices of the records to read (None: all)

    def entries(self) -> list[Entry]:
        lines = range(len(self.records)) if self.kept is None else self.kept
        return [(self.records[i], self.origin, i) for i in lines]


class _BadPage(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class RestSource(Source):
    """Records of a paginated JSON API, incrementally by a record field or in full."""

    kind = "rest"

    def __init__(self, dataset: str, project_root: Path, config: RestConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config

    @property
    def replaces_table(self) -> bool:
        """A full load (no ``incremental``) replaces the table; an incremental one adds."""
        return self.config.incremental is None

    # -- position -------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> Position:
        for state in committed:  # the newest commit holds the whole position
            if state.get("kind") == self.kind:
                return Position(
                    state.get("since"),
                    state.get("resume"),
                    state.get("watermark"),
                    int(state.get("loads", 0)),
                    set(state.get("at_watermark", [])),
                    set(state.get("at_since", [])),
                )
        return self.fresh()

    def fresh(self) -> Position:
        inc = self.config.incremental
        return Position(watermark=None if inc is None else inc.initial)

    def pending(self, position: Any) -> str | None:
        # An API says what is new only when asked, and asking is the run: always stale.
        if self.config.incremental is None:
            return "full load (API polled each run)"
        return "API polled each run"

    def status(self, position: Any) -> SourceStatus:
        pos: Position = position
        return SourceStatus(
            kind=self.kind,
            target=shown(self.config.endpoint()),
            consumed=pos.loads,
            pending=0,
            details={
                "pagination": self.config.paginate.style,
                "watermark": pos.watermark,
                "at_watermark": len(pos.at_watermark),
                "resume": pos.resume is not None,
            },
        )

    # -- reading --------------------------------------------------------------------------

    def _http(self) -> tuple[Http, dict[str, str]]:
        """The HTTP client and the query parameters that authenticate (api key in query)."""
        cfg = self.config
        headers = {"Accept": "application/json", "User-Agent": "lakeforge", **cfg.headers}
        auth_params: dict[str, str] = {}
        secrets: list[str] = []
        if cfg.auth is not None:
            secret = cfg.auth.value(self.dataset, self.project_root)
            secrets.append(secret)
            if cfg.auth.type == "bearer":
                headers["Authorization"] = f"Bearer {secret}"
            elif cfg.auth.type == "basic":
                import base64

                pair = f"{cfg.auth.username}:{secret}".encode()
                encoded = base64.b64encode(pair).decode()
                secrets.append(encoded)
                headers["Authorization"] = f"Basic {encoded}"
            elif cfg.auth.query_param:
                auth_params[cfg.auth.query_param] = secret
            else:
                headers[cfg.auth.header or "X-API-Key"] = secret
        http = Http(
            self.dataset,
            headers=headers,
            secrets=secrets,
            requests_per_second=cfg.requests_per_second,
            max_retries=cfg.max_retries,
            backoff_base=cfg.backoff_base,
            backoff_max=cfg.backoff_max,
            max_retry_after=cfg.max_retry_after,
            timeout=cfg.timeout,
        )
        return http, auth_params

    def _pages(
        self, http: Http, params: dict[str, Any], resume: Any, hidden: set[str]
    ) -> Iterator[_Page]:
        """Pages from ``resume`` (None: the first page) until the pagination ends."""
        p = self.config.paginate
        base = self.config.endpoint()
        count = 0
        at = resume
        bad_before = False
        while True:
            query = dict(params)
            url = base
            if p.style == "cursor" and at is not None:
                query[p.param or "cursor"] = at
            elif p.style == "offset":
                query[p.offset_param] = at if at is not None else (p.start or 0)
                query[p.limit_param] = p.limit
            elif p.style == "page":
                query[p.param or "page"] = at if at is not None else (p.start or 1)
                if p.page_size_param and p.page_size:
                    query[p.page_size_param] = p.page_size
            elif p.style in ("link_header", "next_url") and at is not None:
                url, query = at, {}  # the server's URL carries its own query
            requested = _with_query(url, query)
            response = http.get(requested)
            origin = http.origin(requested, hidden)
            count += 1
            try:
                records = self._records(response)
            except _BadPage as exc:
                if self.config.on_bad_page == "fail":
                    raise SourceError(
                        f"{self.dataset}: GET {shown(response.url)}: {exc}",
                        dataset=self.dataset,
                        hint=exc.hint,
                    ) from None
                bad = (response.body, f"bad page: {exc}", origin, None)
                page = _Page([], self._after_bad_page(response, query, bad_before), origin, bad)
            else:
                page = _Page(records, self._next(response, records, query), origin)
            bad_before = page.bad is not None
            if p.max_pages is not None and count >= p.max_pages:
                page.after = None
            yield page
            if page.after is None:
                return
            at = page.after

    def _records(self, response: Response) -> list[dict[str, Any]]:
        """The page's records; raises _BadPage for a body that is not JSON or lacks them."""
        try:
            body = response.json()
        except ValueError as exc:
            raise _BadPage(f"the response is not JSON ({exc})") from None
        found = body if self.config.records is None else at_path(body, self.config.records)
        if found is MISSING:
            keys = ", ".join(body) if isinstance(body, dict) else type(body).__name__
            raise _BadPage(
                f"no {self.config.records!r} in the response",
                hint=f"set records: to the path of the record list (found: {keys})",
            )
        if found is None:
            return []
        if isinstance(found, dict):
            return [found]
        if not isinstance(found, list):
            raise _BadPage(
                f"the records are a {type(found).__name__}, not a list",
                hint="set records: to the path of the record list (data.items)",
            )
        return [r if isinstance(r, dict) else {"value": r} for r in found]

    def page_records(self, body: bytes) -> list[dict[str, Any]]:
        """The records of a page's body with the current ``records:`` (dead-letter replay)."""
        try:
            return self._records(Response(200, {}, body, ""))
        except _BadPage as exc:
            raise SourceError(f"{self.dataset}: {exc}", dataset=self.dataset) from None

    def _next(self, response: Response, records: list[Any], query: dict[str, Any]) -> Any:
        p = self.config.paginate
        if p.style == "none" or (not records and p.style in ("offset", "page")):
            return None
        if p.style == "offset":
            return None if len(records) < p.limit else int(query[p.offset_param]) + len(records)
        if p.style == "page":
            if p.page_size and len(records) < p.page_size:
                return None
            return int(query[p.param or "page"]) + 1
        if p.style == "link_header":
            link = next((v for k, v in response.headers.items() if k.lower() == "link"), None)
            found = _next_link(link)
            return None if found is None else urllib.parse.urljoin(response.url, found)
        assert p.path is not None
        body = response.json()
        value = at_path(body, p.path)
        if value is MISSING or value in (None, "") or not records:
            return None
        if p.style == "next_url":
            return urllib.parse.urljoin(response.url, str(value))
        return value

    def _after_bad_page(self, response: Response, query: dict[str, Any], bad_before: bool) -> Any:
        """Where to go after a page that could not be read: the ``Link`` header's next page;
        the next offset or page, unless the page before was bad too (past the last page an
        API may answer with an error page); nowhere for a cursor or next URL (in the body)."""
        p = self.config.paginate
        if p.style == "link_header":
            return self._next(response, [], query)
        if bad_before or p.style not in ("offset", "page"):
            return None
        if p.style == "offset":
            return int(query[p.offset_param]) + p.limit
        return int(query[p.param or "page"]) + 1

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        pos: Position = position
        http, auth_params = self._http()
        params: dict[str, Any] = {**self.config.params, **auth_params}
        hidden = set(auth_params)
        inc = self.config.incremental
        loads = pos.loads + 1
        if inc is None:
            pages = list(self._pages(http, params, None, hidden))
            if not _holds(pages):
                # Nothing says what the columns are, so the table cannot be emptied: it is
                # kept as it is (see docs/sources.md).
                return
            yield self._batch(pages, {"kind": self.kind, "loads": loads}, full=True)
            return
        resuming = pos.resume is not None
        since = pos.since if resuming else pos.watermark
        read_at_since = pos.at_since if resuming else pos.at_watermark
        if since is not None:
            params[inc.param] = since
        watermark, at_mark = pos.watermark, set(pos.at_watermark)
        # A full chunk with records is held back until the next one has records too, or the
        # pass ends: the batch that completes the pass (resume None) then always has records
        # — and so columns — even when the pages after it had none.
        ready: tuple[list[_Page], dict[str, Any]] | None = None
        chunk: list[_Page] = []
        try:
            for page in self._pages(http, params, pos.resume, hidden):
                page.kept = []
                for line, record in enumerate(page.records):
                    value = at_path(record, inc.field)
                    if value is not MISSING and value is not None:
                        ident = None
                        if since is not None and _order(value, since) == 0:
                            ident = record_id(record, inc.key)
                            if ident in read_at_since:
                                continue  # read before, at the watermark: exactly once
                        if watermark is None or _order(value, watermark) > 0:
                            watermark, at_mark = value, set()
                        if _order(value, watermark) == 0:
                            at_mark.add(ident or record_id(record, inc.key))
                    page.kept.append(line)
                chunk.append(page)
                if len(chunk) < self.config.pages_per_batch or page.after is None:
                    continue
                if any(p.kept for p in chunk):
                    if ready is not None:
                        yield self._batch(*ready)
                    state = self._state(since, read_at_since, page.after, watermark, at_mark)
                    ready, chunk = (chunk, {**state, "loads": loads}), []
                elif not _holds(chunk):
                    chunk = []  # only records read before: not worth a commit
                # else: only bad pages, kept for the next batch with records
        except SourceError:
            if ready is not None:  # read before the failure: committed, resumed after
                yield self._batch(*ready)
            raise
        final = self._state(since, read_at_since, None, watermark, at_mark)
        if ready is not None:
            if any(p.kept for p in chunk):
                yield self._batch(*ready)
                ready = ([], ready[1])
            yield self._batch(ready[0] + chunk, {**final, "loads": loads})  # completes the pass
        elif _holds(chunk):
            yield self._batch(chunk, {**final, "loads": loads})
        elif resuming:
            # The rest of the pass held nothing: it is complete, and the next one starts now
            # (committing an empty batch to complete it would have no columns).
            yield from self.batches(replace(pos, since=None, resume=None, at_since=set()))

    def _state(
        self, since: Any, at_since: set[str], resume: Any, watermark: Any, at_mark: set[str]
    ) -> dict[str, Any]:
        state = {
            "kind": self.kind,
            "since": since,
            "resume": resume,
            "watermark": watermark,
            "at_watermark": sorted(at_mark),
        }
        if resume is not None:  # an unfinished pass still skips what was read at `since`
            state["at_since"] = sorted(at_since)
        return state

    def _batch(self, pages: list[_Page], state: dict[str, Any], full: bool = False) -> SourceBatch:
        from lakeforge.sources.dead_letters import rejects

        cfg = self.config
        entries = [entry for page in pages for entry in page.entries()]
        data, rejected = read_records(entries, dict(cfg.record_schema), cfg.required)
        rejected += [page.bad for page in pages if page.bad is not None]
        if rejected and (data.num_columns == 0 or (full and data.num_rows == 0)):
            _, error, origin, line = rejected[0]
            where = origin + ("" if line is None else f" record {line}")
            raise SourceError(
                f"{self.dataset}: no record could be read, {len(rejected)} dead letter(s) "
                f"({where}: {error}); "
                + (
                    "a full load that reads nothing keeps the table"
                    if full
                    else "without records or schema: there are no columns to commit them with"
                ),
                dataset=self.dataset,
                hint="fix the API, or the source's records: / schema: / required:",
            )
        description = f"{data.num_rows:,} record(s) from {len(pages)} page(s)"
        if rejected:
            description += f", {len(rejected):,} dead letter(s)"
        return SourceBatch(
            data,
            state,
            description,
            units=len(pages),
            rejected=rejects(rejected) if rejected else None,
        )


def _holds(pages: list[_Page]) -> bool:
    """Whether the pages hold something to commit: records to read, or a bad page."""
    return any(page.entries() or page.bad is not None for page in pages)


def _with_query(url: str, query: dict[str, Any]) -> str:
    if not query:
        return url
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    pairs = [(k, v) for k, v in pairs if k not in query]
    pairs += [(k, _param(v)) for k, v in query.items()]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(pairs)))


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _next_link(header: str | None) -> str | None:
    """The ``rel="next"`` target of an RFC 8288 (5988) ``Link`` header."""
    if not header:
        return None
    for match in _LINK.finditer(header):
        for param in match.group(2).split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "rel" and "next" in value.strip().strip('"').split():
                return match.group(1)
    return None


def _order(a: Any, b: Any) -> int:
    """-1, 0 or 1 as field value ``a`` is below, at or above ``b`` (numbers by value,
    anything else as text)."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return (a > b) - (a < b)
    x, y = str(a), str(b)
    return (x > y) - (x < y)
