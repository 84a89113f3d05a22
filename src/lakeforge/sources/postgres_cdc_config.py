"""Configuration of the PostgreSQL change-data-capture source
(``source: {kind: postgres_cdc, ...}`` / ``lf.postgres_cdc(...)``). How it is read:
``postgres_cdc.py``; the server side (slot, publication, checks): ``pg_replication.py``.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lakeforge.errors import SourceError

_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?\s*$", re.IGNORECASE)
# PostgreSQL's own memory units: kB, MB, GB and TB are powers of 1024.
_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def parse_size(value: Any) -> int:
    """Bytes in ``512MB``, ``1GB``, ``10 GB`` (powers of 1024, as in PostgreSQL), or a number."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a text like 1GB, not a boolean")
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"size {value!r} is not understood; write e.g. 512MB, 1GB or 10GB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


ByteSize = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


def format_size(size: int) -> str:
    for unit in ("TB", "GB", "MB", "kB"):
        factor = _UNITS[unit.lower()]
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaxLag(_Strict):
    """``max_lag: {warn: 1GB, stop: 10GB}``: how much WAL the slot may hold back.

    Args:
        warn: past this, the run logs a warning and the lag guard reads ``warn``.
        stop: past this *after* a run has read what it could, the task fails (the feed
            does not keep up with the source); null: never.
    """

    warn: ByteSize | None = 1 << 30
    stop: ByteSize | None = None

    def level(self, lag: int) -> str:
        """``ok``, ``warn`` or ``stop`` for a lag of ``lag`` bytes."""
        if self.stop is not None and lag > self.stop:
            return "stop"
        if self.warn is not None and lag > self.warn:
            return "warn"
        return "ok"


class PostgresCdcConfig(_Strict):
    """``source: {kind: postgres_cdc, url_env: SHOP_DB, tables: [public.orders]}``.

    Args:
        url / url_env: the database (``postgresql://user@host:5432/db`` or a libpq
            ``key=value`` string), or the environment variable holding it.
        tables: the tables to capture (``schema.table``; ``public`` when no schema).
        publication: the publication to read (default ``lakeforge_<dataset>``), created
            with the tables when it does not exist.
        slot: the logical replication slot (default ``lakeforge_<dataset>``).
        snapshot: read the tables' current rows first (op ``r``); false: only changes
            made after the slot was created.
        snapshot_chunk_rows: rows per snapshot batch (one commit each).
        max_changes_per_batch / max_batch_seconds: bounds of one streamed batch.
        max_lag: the lag guard (:class:`MaxLag`).
        connect_timeout: seconds to wait for a connection.
    """

    kind: Literal["postgres_cdc"] = "postgres_cdc"

    def __init__(self, url: str | None = None, /, **data: Any) -> None:
        # `lf.postgres_cdc("postgresql://cdc@db/shop", tables=["public.orders"])`
        if url is not None:
            data["url"] = url
        super().__init__(**data)

    url: str | None = None
    url_env: str | None = None
    tables: list[str] = Field(min_length=1)
    publication: str | None = None
    slot: str | None = None
    snapshot: bool = True
    snapshot_chunk_rows: int = Field(default=50_000, ge=1)
    max_changes_per_batch: int = Field(default=50_000, ge=1)
    max_batch_seconds: float = Field(default=30.0, gt=0)
    max_lag: MaxLag = Field(default_factory=MaxLag)
    connect_timeout: float = Field(default=10.0, gt=0)

    @field_validator("tables", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("tables")
    @classmethod
    def _qualified(cls, value: list[str]) -> list[str]:
        out = []
        for name in value:
            schema, _, table = name.rpartition(".")
            if not table or '"' in name:
                raise ValueError(f"table {name!r}: write schema.table (no quotes)")
            out.append(f"{schema or 'public'}.{table}")
        if len(set(out)) != len(out):
            raise ValueError("a table is listed twice")
        return out

    @field_validator("slot")
    @classmethod
    def _slot_name(cls, value: str | None) -> str | None:
        if value is not None and not _SLOT_NAME.match(value):
            raise ValueError(
                f"slot name {value!r}: PostgreSQL allows lower-case letters, digits and _ "
                "(at most 63)"
            )
        return value

    @model_validator(mode="after")
    def _one_url(self) -> PostgresCdcConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        return self

    def slot_name(self, dataset: str) -> str:
        if self.slot is not None:
            return self.slot
        return re.sub(r"[^a-z0-9_]", "_", f"lakeforge_{dataset}".lower())[:63]

    def publication_name(self, dataset: str) -> str:
        return self.publication or f"lakeforge_{dataset}"

    def dsn(self, dataset: str) -> str:
        """The connection string for libpq (a SQLAlchemy ``+driver`` suffix is dropped)."""
        if self.url is not None:
            value = self.url
        else:
            assert self.url_env is not None
            value = os.environ.get(self.url_env, "")
            if not value:
                raise SourceError(
                    f"{dataset}: environment variable {self.url_env} (the database URL) is not set",
                    dataset=dataset,
                    hint=f"export {self.url_env}=postgresql://user@host:5432/db",
                )
        return re.sub(r"^(postgres(?:ql)?)\+\w+://", r"\1://", value)
