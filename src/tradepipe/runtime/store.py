"""Event store and checkpoint store (R3.2).

:class:`EventStore` is the event-sourcing view of a bus: append typed events to their topics,
replay them from an offset or a timestamp.

A :class:`Checkpoint` is what a restarted service resumes from: its snapshot, the input
positions that snapshot reflects, and the ids it has seen lately (deduplication window).
All three are saved in one write, so state and positions never disagree; the group commit
that follows is advisory (lag, tools) because a restarted instance resumes from its
checkpoint. A crashed service re-handles only what came after its last checkpoint, and
because outputs get deterministic ids, downstream deduplication drops the repeats.
"""

from __future__ import annotations

import heapq
import sqlite3
import time
import weakref
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from tradepipe.bus.base import Bus, Producer, Record, TopicPartition
from tradepipe.events.codec import Codec, DecodeError, JsonCodec
from tradepipe.events.envelope import Event


class Checkpoint(msgspec.Struct, frozen=True):
    positions: list[tuple[str, int, int]]  # (topic, partition, next offset)
    state: Any = None
    seen_ids: bytes = b""  # concatenated 16-byte event ids, oldest first
    handled: int = 0  # events handled by this service over its life
    saved_ms: int = 0

    def position_map(self) -> dict[TopicPartition, int]:
        return {TopicPartition(t, p): o for t, p, o in self.positions}


class CheckpointStore:
    """Where services keep checkpoints, keyed by (service, group, instance).

    Each instance of a service checkpoints the partitions it owns; stable instance ids
    (static membership) give a restarted instance back its partitions and its state.
    """

    def save(self, service: str, group: str, instance: str, checkpoint: Checkpoint) -> None:
        raise NotImplementedError

    def load(self, service: str, group: str, instance: str) -> Checkpoint | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class MemoryCheckpointStore(CheckpointStore):
    def __init__(self) -> None:
        self._data: dict[tuple[str, str, str], bytes] = {}

    def save(self, service: str, group: str, instance: str, checkpoint: Checkpoint) -> None:
        self._data[(service, group, instance)] = msgspec.msgpack.encode(checkpoint)

    def load(self, service: str, group: str, instance: str) -> Checkpoint | None:
        raw = self._data.get((service, group, instance))
        return None if raw is None else msgspec.msgpack.decode(raw, type=Checkpoint)


class SQLiteCheckpointStore(CheckpointStore):
    """Checkpoints in a SQLite file: by default the SQLite bus's own file, next to the log."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS checkpoints (service TEXT, group_id TEXT, instance TEXT,"
            " body BLOB NOT NULL, saved_ms INTEGER NOT NULL, PRIMARY KEY (service, group_id, instance))"
        )

    def save(self, service: str, group: str, instance: str, checkpoint: Checkpoint) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
            (service, group, instance, msgspec.msgpack.encode(checkpoint), checkpoint.saved_ms),
        )

    def load(self, service: str, group: str, instance: str) -> Checkpoint | None:
        row = self._db.execute(
            "SELECT body FROM checkpoints WHERE service = ? AND group_id = ? AND instance = ?",
            (service, group, instance),
        ).fetchone()
        return None if row is None else msgspec.msgpack.decode(row[0], type=Checkpoint)

    def close(self) -> None:
        self._db.close()


class RedisCheckpointStore(CheckpointStore):
    """Checkpoints in one Redis hash (``{prefix}:checkpoints``), field ``service|group|instance``:
    any host can restart any instance. Redis must persist (AOF or RDB) for them to survive
    a Redis restart."""

    def __init__(self, url: str, prefix: str = "tradepipe") -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._key = f"{prefix}:checkpoints"

    def save(self, service: str, group: str, instance: str, checkpoint: Checkpoint) -> None:
        self._redis.hset(self._key, f"{service}|{group}|{instance}", msgspec.msgpack.encode(checkpoint))

    def load(self, service: str, group: str, instance: str) -> Checkpoint | None:
        raw = self._redis.hget(self._key, f"{service}|{group}|{instance}")
        return None if raw is None else msgspec.msgpack.decode(raw, type=Checkpoint)

    def close(self) -> None:
        self._redis.close()


def checkpoint_store_from_url(url: str) -> CheckpointStore:
    """``sqlite:///state.db`` (a local file: a restarted instance must run on the same host)
    or ``redis://host:port/db[?prefix=p]`` (shared)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return SQLiteCheckpointStore(url.split(":///", 1)[1].split("?", 1)[0])
    if parts.scheme == "redis":
        prefix = parse_qs(parts.query).get("prefix", ["tradepipe"])[0]
        return RedisCheckpointStore(parts._replace(query="").geturl(), prefix)
    raise ValueError(f"bad state store URL {url!r}: expected sqlite:///file.db or redis://host:port/db")


_MEMORY_STORES: weakref.WeakKeyDictionary[object, MemoryCheckpointStore] = weakref.WeakKeyDictionary()


def checkpoint_store_for(bus: Bus) -> CheckpointStore:
    """The default store for a bus: its own file for SQLite; for memory://, one store per
    in-process broker, so runners on the same broker see each other's checkpoints. Network
    buses have no default: name one with :func:`checkpoint_store_from_url`."""
    path = getattr(bus, "path", None)
    if path:
        return SQLiteCheckpointStore(path)
    if bus.url.startswith("memory://"):
        return _MEMORY_STORES.setdefault(getattr(bus, "broker", bus), MemoryCheckpointStore())
    raise ValueError(f"{bus.url} keeps no service checkpoints: pass a store (e.g. --state sqlite:///state.db)")



#: record headers every event carries (R1.3 on the wire): a consumer or a broker-side tool can
#: route, filter or check schemas without decoding the payload
TYPE_HEADER, VERSION_HEADER, CORRELATION_HEADER, CODEC_HEADER = "type", "schemaVersion", "correlationId", "codec"
#: wall-clock time the event was handed to the producer, in epoch microseconds (ASCII digits):
#: the record's timestamp is event time (a backtest's 2014), so pipeline latency and per-hop
#: processing time are measured from this header (ops.metrics)
PRODUCED_AT_HEADER = "producedAt"


#: (event class, codec name) -> the headers every such record has: built once, not per event
_TYPE_HEADERS: dict[tuple[type, str], tuple[tuple[str, bytes], ...]] = {}


def event_headers(event: Event, codec: Codec, produced_at: bytes | None = None) -> tuple[tuple[str, bytes], ...]:
    """The headers of ``event``'s record; ``produced_at`` (:func:`produced_at_now`) defaults to now."""
    key = (type(event), codec.name)
    same = _TYPE_HEADERS.get(key)
    if same is None:
        same = _TYPE_HEADERS[key] = ((TYPE_HEADER, event.type.encode()), (VERSION_HEADER, event.schema_version.encode()),
                                     (CODEC_HEADER, codec.name.encode()))
    headers = same + ((PRODUCED_AT_HEADER, produced_at or produced_at_now()),)
    if event.correlation_id is not None:
        headers += ((CORRELATION_HEADER, str(event.correlation_id).encode()),)
    return headers


def produced_at_now() -> bytes:
    return b"%d" % (time.time_ns() // 1000)


def publish(producer: Producer, codec: Codec, events: Iterable[Event]) -> int:
    """Send each event to its type's topic, keyed by symbol, stamped with event time, with
    :func:`event_headers`; the events of one call share one ``producedAt`` (they leave together)."""
    count = 0
    produced_at = produced_at_now()
    for event in events:
        producer.send(event.topic, codec.encode(event), event.key, timestamp_ms=event.timestamp_ms,
                      headers=event_headers(event, codec, produced_at))
        count += 1
    return count


REPLAY_STALL_S = 10.0  # a replay gives up on a partition that delivers nothing for this long


class StoredEvent(msgspec.Struct, frozen=True):
    """A replayed record and its decoded event (``error`` set instead if it did not decode)."""

    record: Record
    event: Event | None
    error: str | None = None


class EventStore:
    """Append typed events; replay a topic from an offset or a time, decoded."""

    def __init__(self, bus: Bus, codec: Codec | None = None) -> None:
        self.bus = bus
        self.codec = codec or JsonCodec()
        self._producer = bus.producer()

    def append(self, events: Iterable[Event]) -> int:
        count = publish(self._producer, self.codec, events)
        self._producer.flush()
        return count

    def replay(
        self,
        topic: str,
        *,
        from_offset: int = 0,
        from_time: datetime | None = None,
        batch: int = 1000,
    ) -> Iterator[StoredEvent]:
        """Every record of ``topic`` that exists now, from ``from_offset`` in each partition or
        from the first record at or after ``from_time``; partitions are merged in timestamp
        order (within a partition, offset order is kept)."""
        info = self.bus.topic(topic)
        ends = self.bus.end_offsets(topic)
        if from_time is not None:
            starts = self.bus.offsets_for_time(topic, int(from_time.timestamp() * 1000))
        else:
            starts = {p: from_offset for p in range(info.partitions)}
        streams = [
            self._read_partition(TopicPartition(topic, p), starts[p], ends[p], batch)
            for p in range(info.partitions)
            if starts[p] < ends[p]
        ]
        for record in heapq.merge(*streams, key=lambda r: (r.timestamp_ms, r.partition, r.offset)):
            try:
                yield StoredEvent(record, self.codec.decode(record.value))
            except DecodeError as exc:
                yield StoredEvent(record, None, exc.reason)

    def _read_partition(self, tp: TopicPartition, start: int, end: int, batch: int) -> Iterator[Record]:
        """Records [start, end) of ``tp``. A network backend fetches in the background, so an
        empty poll means "not here yet" until nothing came for ``REPLAY_STALL_S``."""
        consumer = self.bus.consumer(None)
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            position = start
            while position < end:
                records = consumer.poll(min(batch, end - position), timeout_s=REPLAY_STALL_S)
                if not records:
                    return
                for record in records:
                    if record.offset >= end:
                        return
                    yield record
                position = records[-1].offset + 1
        finally:
            consumer.close()

    def close(self) -> None:
        self._producer.close()
