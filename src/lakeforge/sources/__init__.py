"""Sources: external systems read incrementally into datasets (see ``base.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakeforge.graph.spec import Dataset
    from lakeforge.sources.base import Source
    from lakeforge.storage.delta import DeltaStore


def source_of(ds: Dataset, project_root: Path, store: DeltaStore | None = None) -> Source | None:
    """The source feeding ``ds``, or None. The one place source kinds are resolved.

    A streaming table without a ``source`` streams from an upstream dataset: its source is
    that dataset's table, read incrementally (``delta_feed.py``; needs ``store``).
    """
    config = ds.config.source
    if config is None:
        if ds.config.mode != "streaming" or store is None:
            return None
        from lakeforge.graph.spec import StreamFrom
        from lakeforge.sources.delta_feed import DeltaFeedSource, stream_input

        settings = ds.config.stream_from or StreamFrom()
        return DeltaFeedSource(ds.name, project_root, stream_input(ds), store, settings)
    from lakeforge.sources.files import FilesSource
    from lakeforge.sources.http_push import HttpPushSource
    from lakeforge.sources.kafka import KafkaSource
    from lakeforge.sources.mqtt import MqttSource
    from lakeforge.sources.nats import NatsSource
    from lakeforge.sources.postgres_cdc import PostgresCdcSource
    from lakeforge.sources.redis_streams import RedisStreamsSource
    from lakeforge.sources.rest import RestSource
    from lakeforge.sources.sql_db import SqlSource

    kinds: dict[str, Any] = {
        "files": FilesSource,
        "sql": SqlSource,
        "rest": RestSource,
        "redis_streams": RedisStreamsSource,
        "mqtt": MqttSource,
        "kafka": KafkaSource,
        "nats": NatsSource,
        "postgres_cdc": PostgresCdcSource,
        "http_push": HttpPushSource,
    }
    return kinds[config.kind](ds.name, project_root, config)
