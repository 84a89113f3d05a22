"""Optional dependencies, imported on first use with an error that says what to install.

Heavy or rarely needed libraries (broker clients, Avro, Protobuf, Spark …) are not
dependencies of ``lakeforge`` itself but of its extras (``pip install 'lakeforge[kafka]'``).
Every import of one goes through :func:`require`, so a missing library is one clear error
naming the extra, never a bare ``ModuleNotFoundError`` from deep inside a run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lakeforge.errors import ConfigError

#: module → (extra that installs it, what it is for)
EXTRAS: dict[str, tuple[str, str]] = {
    "confluent_kafka": ("kafka", "Kafka sources"),
    "nats": ("nats", "NATS JetStream sources"),
    "redis": ("redis", "Redis Streams sources"),
    "paho.mqtt.client": ("mqtt", "MQTT sources"),
    "psycopg2": ("postgres", "PostgreSQL (metadata store, CDC)"),
    "fastavro": ("avro", "Avro payloads"),
    "google.protobuf": ("protobuf", "Protobuf payloads"),
    "pyspark": ("spark", "the Spark engine"),
}


def require(module: str, *, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise a ConfigError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the library is there but broken: its own error says more
        extra, purpose = EXTRAS.get(module, (top, what or module))
        raise ConfigError(
            f"{what or purpose} need(s) the Python package {top!r}, which is not installed",
            hint=f"pip install 'lakeforge[{extra}]'",
        ) from None
