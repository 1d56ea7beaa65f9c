"""The bus interface: Kafka semantics, whatever the backend (R2.1).

- A topic has a fixed number of partitions; a record goes to the partition its key hashes to
  (:func:`tradepipe.bus.partitioner.partition_for`, Kafka's murmur2), so one symbol is on one
  partition and in order there, on every backend.
- Each partition is an append-only log; a record's offset is its position in it.
- Consumers in one group split the partitions of their topics; a group's committed offset per
  partition says where the group resumes. Delivery is at-least-once: whatever was polled but
  not committed is delivered again to whoever owns the partition next.
- A consumer with ``group=None`` reads partitions it assigns itself (replay, tools).

Values are opaque bytes: codecs live above the bus. Backends: ``memory``, ``sqlite`` (and
network backends behind the same classes).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec

DEFAULT_PARTITIONS = 4


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(msgspec.Struct, frozen=True, gc=False):
    """One record read from the bus."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class TopicInfo(msgspec.Struct, frozen=True):
    name: str
    partitions: int
    retention_ms: int | None = None  # None: keep forever


class BusError(Exception):
    """Base of every error a bus raises."""


class UnknownTopicError(BusError, KeyError):
    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.topic = topic

    def __str__(self) -> str:
        return f"unknown topic {self.topic!r} (create it first: bus.create_topic / `tradepipe topics`)"


class BusURLError(BusError, ValueError):
    """A bus URL that names no backend or is malformed."""


class BusClosedError(BusError):
    pass


class BusUnavailableError(BusError):
    """The broker cannot be reached now; nothing was lost, the call may be retried."""


class Producer(ABC):
    """Buffers records; after :meth:`flush` returns they are durable (as the backend can make
    them) and visible to consumers. A backend may make them visible sooner (memory does)."""

    @abstractmethod
    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        *,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        """Queue one record. Raises :class:`UnknownTopicError` here or at :meth:`flush`."""

    @abstractmethod
    def flush(self, timeout_s: float | None = None) -> int:
        """Deliver everything queued; return how many records were delivered. A network
        backend that cannot deliver within ``timeout_s`` (None: wait as long as it takes)
        raises :class:`BusUnavailableError`; the records stay queued for the next flush."""

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer(ABC):
    """Reads records of its assigned partitions, in offset order per partition."""

    @abstractmethod
    def poll(self, max_records: int = 500, timeout_s: float = 0.0) -> list[Record]:
        """Up to ``max_records`` records; waits up to ``timeout_s`` if none is ready."""

    @abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Store the group's next offset per partition; ``None`` commits every position. A
        network backend may finish it in the background: this consumer's next commit,
        :meth:`committed` and :meth:`close` wait for it (and raise its failure)."""

    @abstractmethod
    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset for ``tp``, or None if it has none."""

    @abstractmethod
    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record :meth:`poll` returns for ``tp``."""

    @abstractmethod
    def positions(self) -> dict[TopicPartition, int]:
        """Next offset per partition assigned as of the last poll, without rebalancing: what
        a checkpoint records as handled."""

    @abstractmethod
    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (the partition must be assigned)."""

    @abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this consumer reads now (a group may change it at any poll)."""

    @abstractmethod
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Manual assignment, only for consumers without a group."""

    @abstractmethod
    def set_start_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Where to start reading these partitions when they are next assigned, instead of the
        group's commit (each offset is used once): a service restoring a checkpoint resumes
        from the positions its snapshot reflects (Kafka clients do this in on_assign)."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group (its partitions go to the remaining members); commit nothing."""

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus(ABC):
    url: str

    @abstractmethod
    def create_topic(
        self, name: str, partitions: int = DEFAULT_PARTITIONS, *, retention_ms: int | None = None
    ) -> TopicInfo:
        """Create ``name`` if missing and return it; an existing topic is returned unchanged."""

    @abstractmethod
    def topics(self) -> dict[str, TopicInfo]:
        ...

    @abstractmethod
    def producer(self) -> Producer:
        ...

    @abstractmethod
    def consumer(
        self,
        group: str | None,
        topics: Sequence[str] = (),
        *,
        instance_id: str | None = None,
        auto_offset_reset: str = "earliest",
    ) -> Consumer:
        """A consumer in ``group`` subscribed to ``topics``.

        ``instance_id`` is Kafka's static membership: a restarted process that passes the same
        id takes its predecessor's place at once instead of waiting for it to time out.
        ``auto_offset_reset`` ("earliest" | "latest") applies where the group has no commit.
        """

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next appended record will get."""

    @abstractmethod
    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose record timestamp is >= ``timestamp_ms``."""

    @abstractmethod
    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, ``group``'s committed offset on ``topic`` (partitions it never
        committed are absent): lag tools, and the lockstep replay that waits for every group."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def topic(self, name: str) -> TopicInfo:
        try:
            return self.topics()[name]
        except KeyError:
            raise UnknownTopicError(name) from None

    def partitions_of(self, topics: Iterable[str]) -> list[TopicPartition]:
        topics = list(topics)
        known = self.topics()  # once: on a broker, every call is a metadata round trip
        missing = [t for t in topics if t not in known]
        if missing:
            raise UnknownTopicError(missing[0])
        return [TopicPartition(t, p) for t in topics for p in range(known[t].partitions)]


_BYTES = (bytes, bytearray, memoryview)


def now_ms() -> int:
    """Wall-clock epoch milliseconds: a record's timestamp when the producer gives none."""
    return time.time_ns() // 1_000_000


def check_record_types(value: object, key: object, headers: Sequence[tuple[str, bytes]]) -> None:
    """Refuse, at send, a record a backend could not store or decode back: a stored record must
    never poison a partition."""
    if not isinstance(value, _BYTES):
        raise TypeError(f"a record value must be bytes, not {type(value).__name__}")
    if key is not None and not isinstance(key, _BYTES):
        raise TypeError(f"a record key must be bytes or None, not {type(key).__name__}")
    for header in headers:
        if len(header) != 2 or not isinstance(header[0], str) or not isinstance(header[1], _BYTES):
            raise TypeError(f"a header must be a (str, bytes) pair, not {header!r}")


def assign_partitions(
    subscriptions: Mapping[str, Iterable[str]], partition_counts: Mapping[str, int]
) -> dict[str, frozenset[TopicPartition]]:
    """Split each topic's partitions round-robin over the sorted members subscribed to it.

    Every member computes the same split from the same membership, so no coordinator is
    needed, in-process or across processes: member i of n owns partitions p with p % n == i.
    """
    owned: dict[str, set[TopicPartition]] = {m: set() for m in subscriptions}
    for topic, count in partition_counts.items():
        members = sorted(m for m, topics in subscriptions.items() if topic in topics)
        for p in range(count):
            if members:
                owned[members[p % len(members)]].add(TopicPartition(topic, p))
    return {m: frozenset(tps) for m, tps in owned.items()}


class LogConsumer(Consumer):
    """Consumer logic shared by backends that store partitions as offset-indexed logs.

    It tracks positions, follows the group's assignment and resumes new partitions from the
    group's commit; a backend supplies storage through the ``_`` hooks.
    """

    def __init__(self, group: str | None, topics: Sequence[str], auto_offset_reset: str) -> None:
        if auto_offset_reset not in ("earliest", "latest"):
            raise ValueError(f"auto_offset_reset must be 'earliest' or 'latest', not {auto_offset_reset!r}")
        self.group = group
        self.subscription = tuple(topics)
        self._reset = auto_offset_reset
        self._positions: dict[TopicPartition, int] = {}
        self._start_offsets: dict[TopicPartition, int] = {}
        self._closed = False

    # -- hooks ------------------------------------------------------------------------------
    @abstractmethod
    def _group_assignment(self) -> frozenset[TopicPartition]:
        """This member's share of the group now (joining or heartbeating as needed)."""

    @abstractmethod
    def _fetch(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        ...

    @abstractmethod
    def _wait(self, timeout_s: float) -> None:
        """Block until new records may be there or ``timeout_s`` passes."""

    @abstractmethod
    def _load_committed(self, tp: TopicPartition) -> int | None:
        ...

    @abstractmethod
    def _store_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        ...

    @abstractmethod
    def _end_offset(self, tp: TopicPartition) -> int:
        ...

    @abstractmethod
    def _leave(self) -> None:
        ...

    # -- Consumer ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise BusClosedError("consumer is closed")

    def _sync_assignment(self) -> None:
        if self.group is None:
            return
        current = self._group_assignment()
        for tp in list(self._positions):
            if tp not in current:
                del self._positions[tp]
        for tp in current:
            if tp not in self._positions:
                self._positions[tp] = self._starting_offset(tp)

    def _starting_offset(self, tp: TopicPartition) -> int:
        if tp in self._start_offsets:
            return self._start_offsets.pop(tp)
        committed = self._load_committed(tp) if self.group is not None else None
        if committed is not None:
            return committed
        return 0 if self._reset == "earliest" else self._end_offset(tp)

    def poll(self, max_records: int = 500, timeout_s: float = 0.0) -> list[Record]:
        self._check_open()
        deadline = None
        while True:
            self._sync_assignment()
            out: list[Record] = []
            for tp in sorted(self._positions):
                if len(out) >= max_records:
                    break
                records = self._fetch(tp, self._positions[tp], max_records - len(out))
                if records:
                    self._positions[tp] = records[-1].offset + 1
                    out.extend(records)
            if out or timeout_s <= 0:
                return out
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout_s
            elif now >= deadline:
                return out
            self._wait(min(deadline - now, 0.05))

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        self._check_open()
        if self.group is None:
            raise BusError("a consumer without a group has nothing to commit to")
        self._store_committed(dict(self._positions) if offsets is None else offsets)

    def committed(self, tp: TopicPartition) -> int | None:
        return None if self.group is None else self._load_committed(tp)

    def position(self, tp: TopicPartition) -> int:
        try:
            return self._positions[tp]
        except KeyError:
            raise BusError(f"{tp} is not assigned to this consumer") from None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._positions:
            raise BusError(f"cannot seek {tp}: not assigned to this consumer")
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self._positions[tp] = offset

    def set_start_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._start_offsets = dict(offsets)
        for tp in list(self._start_offsets):
            if tp in self._positions:
                self._positions[tp] = self._start_offsets.pop(tp)

    def positions(self) -> dict[TopicPartition, int]:
        return dict(self._positions)

    def assignment(self) -> frozenset[TopicPartition]:
        self._check_open()
        self._sync_assignment()
        return frozenset(self._positions)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        if self.group is not None:
            raise BusError("assign() is for consumers without a group; a group assigns partitions itself")
        self._positions = {TopicPartition(*tp): self._starting_offset(TopicPartition(*tp)) for tp in partitions}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.group is not None:
                self._leave()
