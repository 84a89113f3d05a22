"""``tls:`` of the broker sources: validation, the SSL context it builds, clear errors."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from conftest import TlsFiles
from lakeforge.errors import SourceError
from lakeforge.sources.tls import CLOSED_DURING_TLS, TlsConfig, TlsOption, tls_failure


class Holder(BaseModel):
    tls: TlsOption = None


def test_shorthands_and_validation() -> None:
    assert Holder(tls=True).tls == TlsConfig()
    assert Holder(tls=False).tls is None and Holder().tls is None
    with pytest.raises(ValidationError, match="key_file needs cert_file"):
        TlsConfig(key_file="k.pem")
    with pytest.raises(ValidationError, match="verify: false checks no certificate"):
        TlsConfig(verify=False, ca_file="ca.pem")
    with pytest.raises(ValidationError, match="Extra inputs"):
        Holder.model_validate({"tls": {"cafile": "ca.pem"}})


def test_context_checks_the_server_and_presents_the_client_certificate(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    f = tls_files
    config = TlsConfig(ca_file=str(f.ca), cert_file=str(f.client_cert), key_file=str(f.client_key))
    context = config.context(tmp_path, "raw")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any("Lakeforge test ca" in str(c["subject"]) for c in context.get_ca_certs())
    unchecked = TlsConfig(verify=False).context(tmp_path, "raw")
    assert unchecked.verify_mode == ssl.CERT_NONE and not unchecked.check_hostname
    # Paths are relative to the project folder.
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(f.ca.read_bytes())
    assert TlsConfig(ca_file="certs/ca.pem").paths(tmp_path, "raw")[0] == str(
        tmp_path / "certs" / "ca.pem"
    )


def test_missing_and_bad_files_are_source_errors(tmp_path: Path, tls_files: TlsFiles) -> None:
    with pytest.raises(SourceError, match=r"raw: tls: cert_file c\.pem does not exist"):
        TlsConfig(cert_file="c.pem").context(tmp_path, "raw")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    with pytest.raises(SourceError, match="cannot load the certificates"):
        TlsConfig(cert_file="garbage.pem").context(tmp_path, "raw")
    # A key that is not the certificate's.
    mismatched = TlsConfig(cert_file=str(tls_files.client_cert), key_file=str(tls_files.server_key))
    with pytest.raises(SourceError, match="cannot load the certificates") as caught:
        mismatched.context(tmp_path, "raw")
    assert "matches cert_file" in str(caught.value.hint)


def test_failure_hints() -> None:
    verify = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    assert "not trusted" in str(tls_failure(verify))
    assert "handshake failed" in str(tls_failure(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]")))
    assert tls_failure(ConnectionRefusedError(111, "Connection refused")) is None
    assert "client certificate" in CLOSED_DURING_TLS


def test_asyncio_benign_tls_eof_warning_is_kept_off_the_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from lakeforge.sources.tls import quiet_benign_ssl_eof

    quiet_benign_ssl_eof()
    quiet_benign_ssl_eof()  # idempotent: one filter
    logger = logging.getLogger("asyncio")
    assert sum(type(f).__name__ == "_BenignSslEof" for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        logger.warning("returning true from eof_received() has no effect when using ssl")
        logger.warning("Task was destroyed but it is pending!")
    assert [r.getMessage() for r in caplog.records] == ["Task was destroyed but it is pending!"]
