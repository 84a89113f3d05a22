"""Shared fixtures for real external services.

Pattern for a service fixture: probe the service with :func:`require_service`, then
connect to it or create what the test needs. An unreachable service skips the test,
unless ``LAKEFORGE_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where it fails instead, so
CI cannot go green by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

REQUIRE_SERVICES_ENV = "LAKEFORGE_REQUIRE_SERVICES"

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"


def services_required() -> bool:
    """Whether unreachable services must fail the tests rather than skip them."""
    return os.environ.get(REQUIRE_SERVICES_ENV, "") == "1"


def require_service(name: str, check: Callable[[], Any]) -> Any:
    """Probe a service; skip the test when it is unreachable, or fail when services are required.

    Args:
        name: what the service is, for the message (e.g. ``"PostgreSQL at 127.0.0.1:5432"``).
        check: a callable that raises (or returns ``False``) when the service is not
            usable; whatever else it returns is passed back (e.g. a client).

    Returns:
        The value returned by ``check``.
    """
    try:
        result = check()
        problem = None if result is not False else "check returned False"
    except Exception as exc:  # any failure of the probe means "not available"
        result = None
        problem = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if problem is None:
        return result
    message = f"{name} is not available ({problem})"
    if services_required():
        pytest.fail(f"{message}; {REQUIRE_SERVICES_ENV}=1 demands every service", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_SERVICES_ENV}=1 to make this a failure")


def _postgres_admin_connection(dbname: str = "postgres") -> Any:
    import psycopg2

    conn = psycopg2.connect(
        host=POSTGRES_HOST,
        port=POSTGRES_PORT,
        user=POSTGRES_USER,
        dbname=dbname,
        connect_timeout=3,
    )
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Callable[[], str]]:
    """A factory creating uniquely named, empty PostgreSQL databases; returns their URLs.

    Every database it creates is dropped at the end of the session.
    """

    def probe() -> None:
        _postgres_admin_connection().close()

    require_service(f"PostgreSQL at {POSTGRES_HOST}:{POSTGRES_PORT}", probe)
    created: list[str] = []

    def create() -> str:
        name = f"lf_test_{uuid.uuid4().hex[:12]}"
        conn = _postgres_admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        created.append(name)
        return f"postgresql+psycopg2://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"

    yield create

    conn = _postgres_admin_connection()
    try:
        with conn.cursor() as cur:
            for name in created:
                # FORCE: a leaked connection from a failed test must not keep the database.
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@pytest.fixture(scope="session")
def postgres_url(postgres_database: Callable[[], str]) -> str:
    """URL of an empty PostgreSQL database private to this test session (or xdist worker)."""
    return postgres_database()


MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[Callable[[], str]]:
    """A factory creating uniquely named, empty MariaDB databases; returns their URLs."""

    def connect() -> Any:
        import pymysql

        return pymysql.connect(
            host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="", connect_timeout=3
        )

    require_service(f"MariaDB at {MARIADB_HOST}:{MARIADB_PORT}", lambda: connect().close())
    created: list[str] = []

    def create() -> str:
        name = f"lf_test_{uuid.uuid4().hex[:12]}"
        conn = connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
        created.append(name)
        return f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"

    yield create

    conn = connect()
    try:
        with conn.cursor() as cur:
            for name in created:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of an S3 API on 127.0.0.1: moto's server (``moto[server]``, a dev dependency),
    started on a free port for the session (or xdist worker). Any credentials are accepted.
    """
    import socket

    def start() -> Any:
        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        url = f"http://127.0.0.1:{port}"
        try:
            import boto3

            client = boto3.client(
                "s3",
                endpoint_url=url,
                aws_access_key_id="probe",
                aws_secret_access_key="probe",
                region_name="us-east-1",
            )
            client.list_buckets()
        except Exception:
            server.stop()
            raise
        return server, url

    server, url = require_service("moto's S3 server (pip install 'moto[server]')", start)
    yield url
    server.stop()
