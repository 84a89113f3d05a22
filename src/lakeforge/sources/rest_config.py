"""Configuration of the REST API source (``source: {kind: rest, ...}`` / ``lf.rest(...)``):
the endpoint, pagination, auth (secrets read at run time), incremental loads, declared
types and dead letters. How it is read: ``rest.py``."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakeforge.errors import SourceError
from lakeforge.sources.rest_http import shown
from lakeforge.sources.rest_records import declared_types

PaginationStyle = Literal["none", "cursor", "offset", "page", "link_header", "next_url"]


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
    """``incremental: {param: updated_since, field: updated_at, initial: "2024-01-01"}``.

    Args:
        param: the query parameter the watermark is sent as.
        field: dot path of the record field whose highest value is the watermark.
        initial: the value sent on the first run (none: the parameter is not sent).
        key: field(s) identifying a record, to tell the records at the watermark already
            read from the others; default: the record's whole content (a hash), so a
            record changed in place at the same watermark is read again.
    """

    param: str
    field: str
    initial: str | int | float | None = None
    key: list[str] = Field(default_factory=list)

    @field_validator("key", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


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
        schema: column → DuckDB type (``BIGINT``, ``DECIMAL(12,2)``, ``TIMESTAMPTZ``);
            records whose values do not cast go to the dead-letter queue.
        required: fields a record must have (not null), or it goes to the dead-letter queue.
        on_bad_page: a 2xx response that is not JSON or lacks ``records``: ``fail`` the run
            (default) or send its body to the dead-letter queue (``dead_letter``).
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
    record_schema: dict[str, str] = Field(default_factory=dict, alias="schema")
    required: list[str] = Field(default_factory=list)
    on_bad_page: Literal["fail", "dead_letter"] = "fail"
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

    @field_validator("record_schema")
    @classmethod
    def _types(cls, value: dict[str, str]) -> dict[str, str]:
        return declared_types(value) if value else value

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
