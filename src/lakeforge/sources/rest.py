"""The REST API source: JSON records from paginated HTTP endpoints, in full or incrementally.

A run requests ``url`` + ``path`` page by page (``paginate``) and takes the records at a
JSON path of each response (``records``). Without ``incremental`` every run is a full load:
all pages are read into **one** batch that replaces the table. With ``incremental`` the
source keeps the highest value of a record field (``updated_at``) and sends it as a query
parameter on the next run; pages are committed ``pages_per_batch`` at a time. Each
incremental batch's state holds the parameter value the pass started from, where the pass
stands (the next cursor, offset, page or URL) and the highest value seen so far, so a run
that dies mid-pass resumes after its last committed batch, with the same parameter.

Records are not deduplicated (an API that treats ``updated_since`` as inclusive returns the
newest record again): pair an incremental REST source with a ``merge`` write on the id.
HTTP (rate limit, retries, redaction of secrets) lives in ``rest_http.py``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakeforge.errors import SourceError
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.rest_http import Http, Response, shown

PaginationStyle = Literal["none", "cursor", "offset", "page", "link_header", "next_url"]
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pagination(_Strict):
    """``paginate: {style: cursor, path: meta.next, param: cursor}`` (or just ``style``).

    Args:
        style: ``none``, ``cursor``, ``offset``, ``page``, ``link_header``, ``next_url``.
        path: JSON path of the next cursor (``cursor``) or next URL (``next_url``).
        param: query parameter of the cursor (default ``cursor``) or page (default ``page``).
        offset_param / limit_param / limit: for ``offset``.
        start: the first offset (0) or page (1).
        page_size_param / page_size: sent with ``page``; a page with fewer records ends.
        max_pages: stop after this many pages (a guard against endless pagination).
    """

    style: PaginationStyle = "none"
    path: str | None = None
    param: str | None = None
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(default=100, ge=1)
    start: int | None = None
    page_size_param: str | None = None
    page_size: int | None = Field(default=None, ge=1)
    max_pages: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _needs(self) -> Pagination:
        if self.style in ("cursor", "next_url") and not self.path:
            raise ValueError(f"pagination {self.style} needs path (where the next one is)")
        return self


class Auth(_Strict):
    """``auth: {type: bearer, token_env: API_TOKEN}`` — secrets come from the environment or
    a secrets file, never from the project.

    Args:
        type: ``bearer``, ``basic`` or ``api_key``.
        token_env / password_env / key_env: environment variable holding the secret.
        secrets_file + secret: a YAML/JSON mapping (relative to the project) and the key
            of the secret in it, instead of the environment variable.
        username: for ``basic``.
        header / query_param: where an ``api_key`` goes (default header ``X-API-Key``).
    """

    type: Literal["bearer", "basic", "api_key"]
    token_env: str | None = None
    password_env: str | None = None
    key_env: str | None = None
    secrets_file: str | None = None
    secret: str | None = None
    username: str | None = None
    header: str | None = None
    query_param: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> Auth:
        env = {"bearer": self.token_env, "basic": self.password_env, "api_key": self.key_env}
        name = {"bearer": "token_env", "basic": "password_env", "api_key": "key_env"}[self.type]
        given = [v for v in (self.token_env, self.password_env, self.key_env) if v]
        if len(given) > 1 or (given and env[self.type] is None):
            raise ValueError(f"auth {self.type} takes {name}, not the others")
        if (env[self.type] is None) == (self.secrets_file is None):
            raise ValueError(f"auth {self.type}: give exactly one of {name} and secrets_file")
        if (self.secrets_file is None) != (self.secret is None):
            raise ValueError("secrets_file and secret (the key in the file) go together")
        if self.type == "basic" and not self.username:
            raise ValueError("auth basic needs username")
        if self.header and self.query_param:
            raise ValueError("an api key goes in a header or a query_param, not both")
        if self.type != "api_key" and (self.header or self.query_param):
            raise ValueError("header / query_param are for auth api_key")
        return self

    def value(self, dataset: str, project_root: Path) -> str:
        """The secret, read at run time."""
        env = self.token_env or self.password_env or self.key_env
        if env is not None:
            found = os.environ.get(env)
            if not found:
                raise SourceError(
                    f"{dataset}: environment variable {env} (the API secret) is not set",
                    dataset=dataset,
                    hint=f"export {env}=…",
                )
            return found
        assert self.secrets_file is not None and self.secret is not None
        return _secret_from_file(dataset, project_root / self.secrets_file, self.secret)


class Incremental(_Strict):
    """``incremental: {param: updated_since, field: updated_at, initial: "2024-01-01"}``."""

    param: str
    field: str
    initial: str | int | float | None = None


class RestConfig(_Strict):
    """``source: {kind: rest, url: https://api.example.com, path: /v1/orders, ...}`` in a SQL
    header, or ``@lf.table(source=lf.rest("https://api.example.com/v1/orders", ...))``.

    Args:
        url: the base URL; path: appended to it.
        params: query parameters sent with every request.
        headers: extra request headers (no secrets: use ``auth``).
        records: dot path of the record list in a response (``data.items``); default: the
            body is the list.
        paginate: how to get the next page (:class:`Pagination`, or a style name).
        auth: :class:`Auth`.
        incremental: :class:`Incremental`; none: every run is a full load.
        pages_per_batch: pages per commit of an incremental source.
        requests_per_second: client-side rate limit, shared per host in the process.
        max_retries / backoff_base / backoff_max / max_retry_after / timeout: HTTP retries.
    """

    kind: Literal["rest"] = "rest"
    url: str = Field(min_length=1)

    def __init__(self, url: str | None = None, /, **data: Any) -> None:
        # `lf.rest("https://api.example.com/v1/orders", records="data")`
        if url is not None:
            data["url"] = url
        super().__init__(**data)

    path: str = ""
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    records: str | None = None
    paginate: Pagination = Field(default_factory=Pagination)
    auth: Auth | None = None
    incremental: Incremental | None = None
    pages_per_batch: int = Field(default=10, ge=1)
    requests_per_second: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    max_retry_after: float = Field(default=300.0, ge=0)
    timeout: float = Field(default=30.0, gt=0)

    @field_validator("paginate", mode="before")
    @classmethod
    def _style_shorthand(cls, value: Any) -> Any:
        return {"style": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if urllib.parse.urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"url {shown(value)!r} must start with http:// or https://")
        return value

    def endpoint(self) -> str:
        if not self.path:
            return self.url
        return self.url.rstrip("/") + "/" + self.path.lstrip("/")


@dataclass
class Position:
    """Where the source stands.

    ``since``: the parameter value the current pass sends; ``resume``: where an unfinished
    pass continues (None: the pass is complete); ``watermark``: the highest field value seen.
    """

    since: Any = None
    resume: Any = None
    watermark: Any = None
    loads: int = 0


@dataclass
class _Page:
    records: list[dict[str, Any]]
    after: Any  # where the next page is (None: this was the last page)


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

    def _pages(self, http: Http, params: dict[str, Any], resume: Any) -> Iterator[_Page]:
        """Pages from ``resume`` (None: the first page) until the pagination ends."""
        p = self.config.paginate
        base = self.config.endpoint()
        count = 0
        at = resume
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
            response = http.get(_with_query(url, query))
            records = self._records(response, http)
            count += 1
            after = self._next(response, records, query, http)
            if p.max_pages is not None and count >= p.max_pages:
                after = None
            yield _Page(records, after)
            if after is None:
                return
            at = after

    def _records(self, response: Response, http: Http) -> list[dict[str, Any]]:
        where = f"{self.dataset}: GET {shown(response.url)}"
        try:
            body = response.json()
        except ValueError as exc:
            raise SourceError(
                f"{where}: the response is not JSON ({exc})", dataset=self.dataset
            ) from None
        found = body if self.config.records is None else _at_path(body, self.config.records)
        if found is _MISSING:
            keys = ", ".join(body) if isinstance(body, dict) else type(body).__name__
            raise SourceError(
                f"{where}: no {self.config.records!r} in the response",
                dataset=self.dataset,
                hint=f"set records: to the path of the record list (found: {keys})",
            )
        if found is None:
            return []
        if isinstance(found, dict):
            return [found]
        if not isinstance(found, list):
            raise SourceError(
                f"{where}: the records are a {type(found).__name__}, not a list",
                dataset=self.dataset,
                hint="set records: to the path of the record list (data.items)",
            )
        return [r if isinstance(r, dict) else {"value": r} for r in found]

    def _next(
        self, response: Response, records: list[Any], query: dict[str, Any], http: Http
    ) -> Any:
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
        value = _at_path(body, p.path)
        if value is _MISSING or value in (None, "") or not records:
            return None
        if p.style == "next_url":
            return urllib.parse.urljoin(response.url, str(value))
        return value

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        pos: Position = position
        http, auth_params = self._http()
        params: dict[str, Any] = {**self.config.params, **auth_params}
        inc = self.config.incremental
        loads = pos.loads + 1
        if inc is None:
            pages = list(self._pages(http, params, None))
            records = [r for page in pages for r in page.records]
            if not records:
                # Nothing says what the columns are, so the table cannot be emptied: it is
                # kept as it is (see docs/sources.md).
                return
            state = {"kind": self.kind, "loads": loads}
            description = f"{len(records):,} record(s) from {len(pages)} page(s)"
            yield SourceBatch(_to_arrow(records), state, description, units=len(pages))
            return
        resuming = pos.resume is not None
        since = pos.since if resuming else pos.watermark
        if since is not None:
            params[inc.param] = since
        watermark = pos.watermark
        chunk: list[_Page] = []
        yielded = False
        for page in self._pages(http, params, pos.resume):
            for record in page.records:
                value = _at_path(record, inc.field)
                watermark = _higher(watermark, None if value is _MISSING else value)
            chunk.append(page)
            if len(chunk) == self.config.pages_per_batch and page.after is not None:
                yield self._batch(chunk, since, page.after, watermark, loads)
                chunk, yielded = [], True
        if any(page.records for page in chunk) or yielded or resuming:
            # The last batch completes the pass (resume None), even when it holds nothing.
            yield self._batch(chunk, since, None, watermark, loads)

    def _batch(
        self, pages: list[_Page], since: Any, resume: Any, watermark: Any, loads: int
    ) -> SourceBatch:
        records = [r for page in pages for r in page.records]
        state = {
            "kind": self.kind,
            "since": since,
            "resume": resume,
            "watermark": watermark,
            "loads": loads,
        }
        description = f"{len(records):,} record(s) from {len(pages)} page(s)"
        return SourceBatch(_to_arrow(records), state, description, units=len(pages))


_MISSING = object()


def _at_path(body: Any, path: str) -> Any:
    """The value at a dot path (``data.items``, ``meta.0.next``), or ``_MISSING``."""
    value = body
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


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


def _higher(current: Any, value: Any) -> Any:
    """The higher of two field values (numbers by value, anything else as text)."""
    if value is None:
        return current
    if current is None:
        return value
    numbers = (int, float)
    both_numbers = isinstance(value, numbers) and isinstance(current, numbers)
    if both_numbers:
        return value if value > current else current
    return value if str(value) > str(current) else current


def _to_arrow(records: list[dict[str, Any]]) -> Any:
    """Records as Arrow: the columns of every record (not just the first), nested values as
    structs and lists; columns whose types clash become text (``dead_letters.unify``), and
    columns that are only ever null are strings (Delta has no null type)."""
    import pyarrow as pa

    from lakeforge.sources.dead_letters import unify

    if not records:
        return pa.table({})
    try:
        table = pa.Table.from_struct_array(pa.array(records))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        table = unify([pa.Table.from_struct_array(pa.array([r])) for r in records])
    for i, fld in enumerate(table.schema):
        if pa.types.is_null(fld.type):
            table = table.set_column(i, fld.name, table.column(i).cast(pa.string()))
    return table


def _secret_from_file(dataset: str, path: Path, key: str) -> str:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        # The reader's message could quote the file: say only which file and why in general.
        reason = "cannot be read" if isinstance(exc, OSError) else "is not YAML or JSON"
        raise SourceError(f"{dataset}: the secrets file {path} {reason}", dataset=dataset) from None
    if not isinstance(data, dict) or not data.get(key):
        raise SourceError(
            f"{dataset}: the secrets file {path} has no {key!r}",
            dataset=dataset,
            hint="a YAML or JSON mapping of secret names to values",
        )
    return str(data[key])
