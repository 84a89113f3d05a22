"""The configuration of a NATS JetStream source (``kind: nats``): what it reads, how it
authenticates, how it cuts batches. The source itself is :mod:`lakeforge.sources.nats`."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakeforge.sources.payloads import PayloadConfig
from lakeforge.sources.tls import TlsOption

DEFAULT_SERVER = "nats://127.0.0.1:4222"
# password and token are given as `${VAR}`, read from the environment when the source runs
SECRET_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[^.*>\s]+$")  # stream and durable names


class NatsConfig(BaseModel):
    """``source: {kind: nats, stream: ORDERS, subject: "orders.>", ...}`` in a SQL header, or
    ``@lf.table(source=lf.nats("ORDERS", subject="orders.>"))`` in Python.

    Args:
        servers: the NATS server URL(s) (default ``nats://127.0.0.1:4222``).
        stream: the JetStream stream read.
        subjects / subject: the subjects read (wildcards allowed); none: the whole stream.
            Several subjects need NATS server 2.10 or later.
        durable: the durable pull consumer's name (default ``lakeforge_<dataset>``); it
            belongs to the dataset: do not share it with other readers.
        start: where a new consumer starts when the table has no position: ``all`` (the
            stream's first message) or ``new`` (messages published from then on).
        payload: ``{format: json|avro|protobuf|text|bytes, schema_file, message}``.
        max_messages_per_batch / max_batch_seconds: a batch ends at whichever comes first.
        headers: add ``_headers`` (a list of ``{key, value}``).
        metadata_prefix: prefix of the ``subject``, ``stream_seq``, ``timestamp`` (and
            ``headers``) columns.
        ack_wait: seconds JetStream waits for an ack before it redelivers; longer than a
            batch takes to be read, transformed and committed.
        user / password / token / creds_file: authentication; ``password`` and ``token``
            only as ``${VAR}`` references, read when the source runs.
        timeout: seconds to wait for the server (connect, each request).
        tls: ``true`` or ``{ca_file, cert_file, key_file, verify, server_name}``
            (:class:`~lakeforge.sources.tls.TlsConfig`): the server must speak TLS; a
            ``tls://`` server URL does too, with the system's trusted certificates.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["nats"] = "nats"
    stream: str = Field(min_length=1)

    def __init__(self, stream: str | None = None, /, **data: Any) -> None:
        # `lf.nats("ORDERS", subject="orders.>")`: the stream may come first.
        if stream is not None:
            data["stream"] = stream
        super().__init__(**data)

    servers: list[str] = Field(default_factory=lambda: [DEFAULT_SERVER], min_length=1)
    subjects: list[str] = Field(default_factory=list)
    durable: str | None = None
    start: Literal["all", "new"] = "all"
    payload: PayloadConfig = Field(default_factory=PayloadConfig)
    max_messages_per_batch: int = Field(default=10_000, ge=1)
    max_batch_seconds: float = Field(default=5.0, gt=0)
    headers: bool = False
    metadata_prefix: str = "_"
    ack_wait: float = Field(default=60.0, gt=0)
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    timeout: float = Field(default=10.0, gt=0)
    tls: TlsOption = None

    @model_validator(mode="before")
    @classmethod
    def _subject_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "subject" in data:
            if "subjects" in data:
                raise ValueError("give subject or subjects, not both")
            data = {**data, "subjects": data["subject"]}
            del data["subject"]
        return data

    @field_validator("servers", "subjects", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("stream", "durable")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"{value!r}: a name must not contain '.', '*', '>' or spaces")
        return value

    @field_validator("subjects")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("subjects are listed more than once")
        return value

    @field_validator("password", "token")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and not SECRET_REFERENCE.fullmatch(value.strip()):
            raise ValueError(
                "a secret: give it as a reference to an environment variable (${VAR}), "
                "not its value"
            )
        return value

    @model_validator(mode="after")
    def _auth(self) -> NatsConfig:
        if self.password is not None and self.user is None:
            raise ValueError("password needs user")
        if self.token is not None and (self.user is not None or self.creds_file is not None):
            raise ValueError("give token, user/password or creds_file, not several")
        return self
