"""Shared fixtures for real external services.

Pattern for a service fixture: probe the service with :func:`require_service`, then
connect to it or create what the test needs. An unreachable service skips the test,
unless ``LAKEFORGE_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where it fails instead, so
CI cannot go green by skipping.
"""

from __future__ import annotations

import os
import threading
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


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the Redis server on 127.0.0.1:6379 (Redis ≥ 5 for streams; 7 for ``lag``)."""

    def probe() -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()

    require_service(f"Redis at {REDIS_URL}", probe)
    return REDIS_URL


@pytest.fixture
def redis_stream(redis_url: str) -> Iterator[Callable[[], str]]:
    """A factory of unique stream keys (``lf_test:<hex>``); each is deleted after the test,
    with its consumer groups."""
    import redis

    created: list[str] = []

    def create() -> str:
        key = f"lf_test:{uuid.uuid4().hex[:12]}"
        created.append(key)
        return key

    yield create
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        if created:
            client.delete(*created)
    finally:
        client.close()


MQTT_HOST = "127.0.0.1"
MQTT_PORT = 1883


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """(host, port) of the MQTT broker (Mosquitto) on 127.0.0.1:1883, probed with a real
    MQTT connection (paho-mqtt)."""

    def probe() -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"lf-probe-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        client.connect_timeout = 3
        accepted = threading.Event()
        client.on_connect = lambda *args: accepted.set()
        client.connect(MQTT_HOST, MQTT_PORT)
        client.loop_start()
        try:
            if not accepted.wait(3):
                raise TimeoutError("no CONNACK within 3 s")
        finally:
            client.disconnect()
            client.loop_stop()

    require_service(f"MQTT broker at {MQTT_HOST}:{MQTT_PORT}", probe)
    return MQTT_HOST, MQTT_PORT


@pytest.fixture
def mqtt_names() -> str:
    """A unique prefix for the topics and client ids of one test (``lf-test-<hex>``)."""
    return f"lf-test-{uuid.uuid4().hex[:12]}"


class MockKafka:
    """librdkafka's mock cluster, kept alive by the producer that created it."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        brokers = producer.list_topics(timeout=5).brokers.values()
        #: the brokers' ``host:port`` list, for clients in this process or in others
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[MockKafka]:
    """librdkafka's built-in mock Kafka cluster (``test.mock.num.brokers: 3``), which speaks
    the real protocol, alive for the session in this process. Topics are created on first
    use with 4 partitions (the mock's default)."""

    def start() -> MockKafka:
        import confluent_kafka

        conf = {"test.mock.num.brokers": 3, "log_level": 3, "linger.ms": 0}
        return MockKafka(confluent_kafka.Producer(conf))

    cluster = require_service("librdkafka's mock cluster (pip install confluent-kafka)", start)
    yield cluster
    cluster.producer.flush(5)


@pytest.fixture
def kafka_topic() -> Callable[[], str]:
    """A factory of unique topic names (``lf-test-<hex>``) on the mock cluster."""
    return lambda: f"lf-test-{uuid.uuid4().hex[:12]}"


NATS_URL = "nats://127.0.0.1:4222"


class JetStreamAdmin:
    """A synchronous handle on the NATS server (nats-py is asyncio: it runs in a loop of
    its own): streams, publishing, consumer info."""

    def __init__(self, url: str, **options: Any) -> None:
        import asyncio

        import nats

        self.url = url
        self._loop = asyncio.new_event_loop()
        # (max_reconnect_attempts=0 would retry the first connect forever)
        connect = nats.connect(
            url, connect_timeout=3, max_reconnect_attempts=1, reconnect_time_wait=0.2, **options
        )
        self.nc = self.run(asyncio.wait_for(connect, 10))
        self.js = self.nc.jetstream(timeout=5)

    def run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> int:
        """Publish one message; returns its stream sequence."""
        return int(self.run(self.js.publish(subject, data, headers=headers)).seq)

    def consumer_info(self, stream: str, durable: str) -> Any:
        return self.run(self.js.consumer_info(stream, durable))

    def close(self) -> None:
        self.run(self.nc.close())
        self._loop.close()


@pytest.fixture
def nats_jetstream() -> Iterator[JetStreamAdmin]:
    """The NATS server with JetStream on 127.0.0.1:4222, on a connection of the test's own.

    Not session-scoped: the admin's asyncio loop runs only inside ``run()``, so a
    connection kept idle between tests answers no server PINGs, and after a few minutes
    the server closes it as stale (the next test then timed out reconnecting)."""

    def probe() -> JetStreamAdmin:
        admin = JetStreamAdmin(NATS_URL)
        try:
            admin.run(admin.js.account_info())
        except Exception:
            admin.close()
            raise
        return admin

    admin = require_service(f"NATS JetStream at {NATS_URL}", probe)
    yield admin
    admin.close()


@pytest.fixture
def nats_stream(nats_jetstream: JetStreamAdmin) -> Iterator[Callable[[], str]]:
    """A factory of uniquely named JetStream streams (``LF_TEST_<HEX>``, subjects
    ``<name>.>``); each is deleted after the test."""
    created: list[str] = []

    def create() -> str:
        name = f"LF_TEST_{uuid.uuid4().hex[:12].upper()}"
        nats_jetstream.run(nats_jetstream.js.add_stream(name=name, subjects=[f"{name}.>"]))
        created.append(name)
        return name

    yield create
    for name in created:
        nats_jetstream.run(nats_jetstream.js.delete_stream(name))


# -- PostgreSQL with wal_level=logical (CDC) -------------------------------------------------

PG_BIN_ENV = "LAKEFORGE_PG_BIN"
PG_BIN_DEFAULT = "/usr/lib/postgresql/15/bin"


class LogicalPostgres:
    """A PostgreSQL cluster of the test session's own, with ``wal_level=logical``.

    The shared server on 5432 runs ``wal_level=replica`` and other tests use it, so it is not
    restarted: this cluster is ``initdb``-ed into a temporary folder (as the ``postgres`` OS
    user when the tests run as root), listens on a free port of 127.0.0.1 with trust auth,
    and is stopped at the end of the session.
    """

    def __init__(self, root: Any, port: int) -> None:
        self.root = root
        self.host = "127.0.0.1"
        self.port = port
        self.user = "postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname=dbname, connect_timeout=5
        )
        conn.autocommit = True
        return conn

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"lf_cdc_{uuid.uuid4().hex[:12]}"
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name


def _as_postgres_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="session")
def postgres_logical() -> Iterator[LogicalPostgres]:
    """A PostgreSQL cluster with ``wal_level=logical`` for this session (or xdist worker)."""
    import shutil
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    bindir = Path(os.environ.get(PG_BIN_ENV, PG_BIN_DEFAULT))
    as_postgres = _as_postgres_user()

    def start() -> LogicalPostgres:
        for tool in ("initdb", "pg_ctl"):
            if not (bindir / tool).exists():
                raise FileNotFoundError(f"{bindir / tool} (set {PG_BIN_ENV})")
        root = Path(tempfile.mkdtemp(prefix="lf-pg-logical-"))
        if as_postgres:
            shutil.chown(root, user="postgres")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
        subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres",
             "-A", "trust", "-E", "UTF8", "--no-locale"],
            **run,
        )  # fmt: skip
        settings = (
            f"-c wal_level=logical -c port={port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={root} -c max_replication_slots=10 "
            "-c max_wal_senders=10 -c fsync=off -c full_page_writes=off"
        )
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l",
             str(root / "server.log"), "-w", "-t", "60", "-o", settings, "start"],
            **run,
        )  # fmt: skip
        cluster = LogicalPostgres(root, port)
        cluster.connect().close()
        return cluster

    cluster = require_service("a PostgreSQL cluster with wal_level=logical (initdb, pg_ctl)", start)
    yield cluster
    subprocess.run(
        [*as_postgres, str(bindir / "pg_ctl"), "-D", str(cluster.root / "data"), "-m", "immediate",
         "-w", "stop"],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    shutil.rmtree(cluster.root, ignore_errors=True)


# -- TLS certificates ---------------------------------------------------------------------


class TlsFiles:
    """PEM files of a test certificate authority, a server certificate it signed (for
    ``localhost`` and ``127.0.0.1``), a client certificate it signed, and a certificate of
    another authority (trusted by nothing)."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.ca = root / "ca.pem"
        self.server_cert = root / "server.pem"
        self.server_key = root / "server-key.pem"
        self.client_cert = root / "client.pem"
        self.client_key = root / "client-key.pem"
        self.other_ca = root / "other-ca.pem"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Certificates made with the openssl command line for this session (EC P-256, valid
    two days)."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    require_service("the openssl command", lambda: openssl is not None)
    files = TlsFiles(tmp_path_factory.mktemp("tls"))
    root = files.root

    def sh(*args: str) -> None:
        subprocess.run([str(openssl), *args], check=True, capture_output=True, cwd=root)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        sh("req", "-x509", *key, "-keyout", f"{name}-key.pem", "-out", f"{name}.pem",
           "-days", "2", "-subj", f"/CN=Lakeforge test {name}",
           "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    for name, usage, san in (
        ("server", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "clientAuth", "subjectAltName=DNS:lakeforge-client"),
    ):
        (root / f"{name}.ext").write_text(
            f"{san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
        )
        sh("req", *key, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr",
           "-subj", f"/CN={name}")  # fmt: skip
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
           "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
           "-extfile", f"{name}.ext")  # fmt: skip
    return files


# -- servers a test starts itself -------------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server_processes() -> Iterator[Callable[[list[str], int], None]]:
    """``start(argv, port)``: run a server (its output discarded) and return once it
    listens on 127.0.0.1:port; every server started is stopped after the test."""
    import socket
    import subprocess
    import time

    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], port: int) -> None:
        require_service(f"the {argv[0]} binary", lambda: os.path.exists(argv[0]))
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            assert proc.poll() is None, f"{argv[0]} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{argv[0]} did not listen within 10 s"
            time.sleep(0.05)

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)
