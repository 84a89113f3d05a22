"""Lakeforge: lakehouse data pipelines on Delta Lake.

The public API is what this module exports; everything else is internal. The names are
resolved on first use (PEP 562), so importing a submodule — the CLI, to print ``--help`` —
does not build every configuration model first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakeforge.errors import TransientError
    from lakeforge.graph.decorators import stream_table, table, view
    from lakeforge.graph.partitions import Daily, Hourly, Monthly, Static
    from lakeforge.graph.spec import (
        CDC,
        SCD2,
        Append,
        ColumnSpec,
        Merge,
        Overwrite,
        ReplacePartitions,
    )
    from lakeforge.scheduling.sensors import RunRequest, SensorContext, sensor
    from lakeforge.sources.files import FilesConfig as files
    from lakeforge.sources.http_push import HttpPushConfig as http_push
    from lakeforge.sources.kafka import KafkaConfig as kafka
    from lakeforge.sources.mqtt import MqttConfig as mqtt
    from lakeforge.sources.nats_config import NatsConfig as nats
    from lakeforge.sources.postgres_cdc_config import PostgresCdcConfig as postgres_cdc
    from lakeforge.sources.redis_streams import RedisStreamsConfig as redis_streams
    from lakeforge.sources.rest import RestConfig as rest
    from lakeforge.sources.sql_db import SqlConfig as database

__version__ = "0.1.0"

# public name → (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "table": ("lakeforge.graph.decorators", "table"),
    "view": ("lakeforge.graph.decorators", "view"),
    "stream_table": ("lakeforge.graph.decorators", "stream_table"),
    "CDC": ("lakeforge.graph.spec", "CDC"),
    "SCD2": ("lakeforge.graph.spec", "SCD2"),
    "Append": ("lakeforge.graph.spec", "Append"),
    "ColumnSpec": ("lakeforge.graph.spec", "ColumnSpec"),
    "Merge": ("lakeforge.graph.spec", "Merge"),
    "Overwrite": ("lakeforge.graph.spec", "Overwrite"),
    "ReplacePartitions": ("lakeforge.graph.spec", "ReplacePartitions"),
    "Daily": ("lakeforge.graph.partitions", "Daily"),
    "Hourly": ("lakeforge.graph.partitions", "Hourly"),
    "Monthly": ("lakeforge.graph.partitions", "Monthly"),
    "Static": ("lakeforge.graph.partitions", "Static"),
    "TransientError": ("lakeforge.errors", "TransientError"),
    "files": ("lakeforge.sources.files", "FilesConfig"),
    "database": ("lakeforge.sources.sql_db", "SqlConfig"),
    "rest": ("lakeforge.sources.rest", "RestConfig"),
    "redis_streams": ("lakeforge.sources.redis_streams", "RedisStreamsConfig"),
    "mqtt": ("lakeforge.sources.mqtt", "MqttConfig"),
    "kafka": ("lakeforge.sources.kafka", "KafkaConfig"),
    "http_push": ("lakeforge.sources.http_push", "HttpPushConfig"),
    "nats": ("lakeforge.sources.nats_config", "NatsConfig"),
    "postgres_cdc": ("lakeforge.sources.postgres_cdc_config", "PostgresCdcConfig"),
    "sensor": ("lakeforge.scheduling.sensors", "sensor"),
    "RunRequest": ("lakeforge.scheduling.sensors", "RunRequest"),
    "SensorContext": ("lakeforge.scheduling.sensors", "SensorContext"),
}

__all__ = [
    "CDC",
    "SCD2",
    "Append",
    "ColumnSpec",
    "Daily",
    "Hourly",
    "Merge",
    "Monthly",
    "Overwrite",
    "ReplacePartitions",
    "RunRequest",
    "SensorContext",
    "Static",
    "TransientError",
    "__version__",
    "database",
    "files",
    "http_push",
    "kafka",
    "mqtt",
    "nats",
    "postgres_cdc",
    "redis_streams",
    "rest",
    "sensor",
    "stream_table",
    "table",
    "view",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'lakeforge' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
