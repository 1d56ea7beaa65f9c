"""The event bus (R2): one interface, several backends, chosen by URL.

>>> bus = open_bus("sqlite:///tradepipe.db")   # or memory://, kafka://host:port, redis://host:port/db
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from tradepipe.bus.base import (
    DEFAULT_PARTITIONS, Bus, BusClosedError, BusError, BusUnavailableError, BusURLError, Consumer, Producer, Record,
    TopicInfo, TopicPartition, UnknownTopicError,
)
from tradepipe.bus.partitioner import murmur2, partition_for

SCHEMES = ("memory", "sqlite", "kafka", "redis")


def open_bus(url: str, *, create: bool = True, options: Mapping[str, Any] | None = None) -> Bus:
    """Open the bus a URL names, with ``?key=value`` options:

    - ``memory://[name]``;
    - ``sqlite:///relative.db`` / ``sqlite:////absolute/path.db`` (SQLAlchemy's convention);
    - ``kafka://host:port[,host:port]`` (Apache Kafka, Redpanda, Tansu);
    - ``redis://host:port/db``.

    ``options`` are the backend's settings (``Settings.bus.kafka`` / ``.redis``); the URL's
    query overrides them. ``create=False`` refuses to create a missing bus file (tools that only
    read, e.g. replay)."""
    if "://" not in url:
        raise BusURLError(f"bad bus URL {url!r}: expected scheme://..., e.g. sqlite:///tradepipe.db or memory://")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from tradepipe.bus.memory import MemoryBus

        return MemoryBus(parts.netloc + parts.path.strip("/"))
    if scheme == "sqlite":
        from tradepipe.bus.sqlite import SQLiteBus

        return SQLiteBus.from_url(url, create=create)
    if scheme == "kafka":
        from tradepipe.bus.kafka import KafkaBus

        return KafkaBus.from_url(url, options or {})
    if scheme == "redis":
        from tradepipe.bus.redis import RedisBus

        return RedisBus.from_url(url, options or {})
    raise BusURLError(f"bad bus URL {url!r}: unknown scheme {scheme!r}; supported: {', '.join(SCHEMES)}")


__all__ = [
    "DEFAULT_PARTITIONS", "Bus", "BusClosedError", "BusError", "BusUnavailableError", "BusURLError", "Consumer", "Producer",
    "Record", "TopicInfo", "TopicPartition", "UnknownTopicError", "murmur2", "open_bus", "partition_for",
]
