"""TLS to a broker: ``tls: {ca_file, cert_file, key_file, verify, server_name}`` on the NATS,
MQTT and Redis Streams sources (Kafka takes librdkafka's ``ssl.*`` keys in ``config:``).

One :class:`TlsConfig` builds one :class:`ssl.SSLContext` the same way for every broker:
the server's certificate is checked against ``ca_file`` (default: the system's trusted
certificates) and its name against ``server_name`` (default: the host connected to);
``cert_file``/``key_file`` present a client certificate (mutual TLS). Paths are relative
to the project folder. ``tls: true`` is TLS with those defaults.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from lakeforge.errors import SourceError


class TlsConfig(BaseModel):
    """How a source secures its broker connection.

    Args:
        ca_file: PEM file of the certificate authorities trusted for the server's
            certificate (a private CA); default: the system's trusted certificates.
        cert_file: PEM client certificate, for a server that requires one (mutual TLS).
        key_file: the client certificate's PEM private key, unencrypted (default: in
            ``cert_file``).
        verify: ``false`` accepts any server certificate, unchecked — for a test bench
            only: it gives up the protection against a man in the middle.
        server_name: the name the server's certificate must carry, when it is not the
            host connected to (e.g. connecting by IP address).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = Field(default=None, min_length=1)
    cert_file: str | None = Field(default=None, min_length=1)
    key_file: str | None = Field(default=None, min_length=1)
    verify: bool = True
    server_name: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {} if data is True else data

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate)")
        if not self.verify and (self.ca_file is not None or self.server_name is not None):
            raise ValueError("verify: false checks no certificate: drop ca_file/server_name")
        return self

    def paths(self, project_root: Path, dataset: str) -> tuple[str | None, str | None, str | None]:
        """``ca_file``, ``cert_file`` and ``key_file`` as absolute paths (None: not given);
        a file that does not exist is a SourceError."""
        return (
            self._path(self.ca_file, project_root, dataset, "ca_file"),
            self._path(self.cert_file, project_root, dataset, "cert_file"),
            self._path(self.key_file, project_root, dataset, "key_file"),
        )

    def context(self, project_root: Path, dataset: str) -> ssl.SSLContext:
        """The client-side SSL context; a missing or unreadable file is a SourceError."""
        ca, cert, key = self.paths(project_root, dataset)
        try:
            context = ssl.create_default_context(cafile=ca)
            if cert is not None:
                context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise SourceError(
                f"{dataset}: tls: cannot load the certificates: {exc.reason or exc}",
                dataset=dataset,
                hint="ca_file and cert_file take PEM certificates, key_file an unencrypted "
                "PEM key that matches cert_file",
            ) from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @staticmethod
    def _path(value: str | None, root: Path, dataset: str, key: str) -> str | None:
        if value is None:
            return None
        path = (root / value).resolve()
        if not path.is_file():
            raise SourceError(
                f"{dataset}: tls: {key} {value} does not exist (looked at {path})",
                dataset=dataset,
                hint="paths are relative to the project folder",
            )
        return str(path)


CLOSED_DURING_TLS = (
    "the server closed the TLS connection: does it require a client certificate "
    "(tls: {cert_file, key_file}), and does it trust the CA that signed it?"
)


def _off(value: Any) -> Any:
    return None if value is False else value


# A source's `tls:` key: `true`, `false` (plain) or the settings.
TlsOption = Annotated[TlsConfig | None, BeforeValidator(_off)]


def tls_failure(exc: BaseException) -> str | None:
    """A hint for a failed TLS handshake, or None when ``exc`` is not one."""
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "the server's certificate is not trusted: give the CA that signed it as "
            "tls: {ca_file: ...} (or server_name: when it names another host)"
        )
    if isinstance(exc, ssl.SSLError) or "SSL" in text or "TLS" in text:
        return (
            "the TLS handshake failed: does the server speak TLS on this port, and does it "
            "require a client certificate (tls: {cert_file, key_file})?"
        )
    return None


_BENIGN_EOF = "returning true from eof_received() has no effect when using ssl"


class _BenignSslEof(logging.Filter):
    """asyncio logs this warning whenever a TLS peer closes an asyncio stream (the stream
    protocol asks to keep the transport half-open, which TLS cannot): the connection is
    closed either way, and the line would only alarm the terminal of every TLS run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _BENIGN_EOF


def quiet_benign_ssl_eof() -> None:
    """Keep asyncio's benign TLS end-of-stream warning off the terminal (idempotent)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _BenignSslEof) for f in logger.filters):
        logger.addFilter(_BenignSslEof())
