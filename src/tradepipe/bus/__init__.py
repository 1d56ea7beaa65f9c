"""The event bus (R2): one interface, several backends, chosen by URL.

>>> bus = open_bus("sqlite:///tradepipe.db")   # or memory://, later kafka://, redis://
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tradepipe.bus.base import (
    DEFAULT_PARTITIONS, Bus, BusClosedError, BusError, BusURLError, Consumer, Producer, Record,
    TopicInfo, TopicPartition, UnknownTopicError,
)
from tradepipe.bus.partitioner import murmur2, partition_for

SCHEMES = ("memory", "sqlite")


def open_bus(url: str, *, create: bool = True) -> Bus:
    """Open the bus a URL names: ``memory://[name]`` or ``sqlite:///relative.db`` /
    ``sqlite:////absolute/path.db`` (SQLAlchemy's convention), with ``?key=value`` options.

    ``create=False`` refuses to create a missing bus file (tools that only read, e.g. replay)."""
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
    raise BusURLError(f"bad bus URL {url!r}: unknown scheme {scheme!r}; supported: {', '.join(SCHEMES)}")


__all__ = [
    "DEFAULT_PARTITIONS", "Bus", "BusClosedError", "BusError", "BusURLError", "Consumer", "Producer",
    "Record", "TopicInfo", "TopicPartition", "UnknownTopicError", "murmur2", "open_bus", "partition_for",
]
