"""In-memory bus: one process, no durability; for tests and backtests.

``memory://`` gives a private broker; ``memory://NAME`` the broker of that name in this
process, so separately opened buses can share topics.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence

from tradepipe.bus.base import (
    DEFAULT_PARTITIONS, Bus, Consumer, LogConsumer, Producer, Record, TopicInfo, TopicPartition,
    UnknownTopicError, assign_partitions, now_ms,
)
from tradepipe.bus.partitioner import partition_for


class MemoryBroker:
    def __init__(self) -> None:
        self.topics: dict[str, TopicInfo] = {}
        self.logs: dict[TopicPartition, list[Record]] = {}
        self.committed: dict[str, dict[TopicPartition, int]] = {}
        self.members: dict[str, dict[str, tuple[str, ...]]] = {}  # group -> member -> topics
        self.lock = threading.Lock()
        self.appended = threading.Condition(self.lock)
        self._round_robin = 0

    def create_topic(self, name: str, partitions: int, retention_ms: int | None) -> TopicInfo:
        if partitions < 1:
            raise ValueError("a topic needs at least one partition")
        with self.lock:
            if name not in self.topics:
                self.topics[name] = TopicInfo(name, partitions, retention_ms)
                for p in range(partitions):
                    self.logs[TopicPartition(name, p)] = []
            return self.topics[name]

    def info(self, topic: str) -> TopicInfo:
        try:
            return self.topics[topic]
        except KeyError:
            raise UnknownTopicError(topic) from None

    def choose_partition(self, topic: str, key: bytes | None, partition: int | None) -> int:
        count = self.info(topic).partitions
        if partition is not None:
            if not 0 <= partition < count:
                raise ValueError(f"partition {partition} out of range for {topic!r} ({count} partitions)")
            return partition
        if key is None:
            self._round_robin += 1
            return self._round_robin % count
        return partition_for(key, count)

    def assignment_of(self, group: str, member: str) -> frozenset[TopicPartition]:
        subs = self.members.get(group, {})
        counts = {t: self.topics[t].partitions for topics in subs.values() for t in topics}
        return assign_partitions(subs, counts).get(member, frozenset())


_NAMED: dict[str, MemoryBroker] = {}


class MemoryProducer(Producer):
    """Appends at once (a record is readable as soon as ``send`` returns); ``flush`` wakes
    consumers blocked in ``poll``. The send path is kept lean: it is the in-process hot path."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._partition_logs: dict[str, list[list[Record]]] = {}
        self._key_partition: dict[tuple[str, bytes], int] = {}  # keys are few (symbols)
        self._pending = 0

    def _logs_of(self, topic: str) -> list[list[Record]]:
        count = self._broker.info(topic).partitions
        logs = self._partition_logs[topic] = [self._broker.logs[TopicPartition(topic, p)] for p in range(count)]
        return logs

    def send(self, topic, value, key=None, *, timestamp_ms=None, headers=(), partition=None) -> None:
        logs = self._partition_logs.get(topic) or self._logs_of(topic)
        if partition is None:
            if key is None:
                p = self._broker.choose_partition(topic, None, None)
            else:
                p = self._key_partition.get((topic, key))
                if p is None:
                    p = self._key_partition[(topic, key)] = partition_for(key, len(logs))
        else:
            p = self._broker.choose_partition(topic, key, partition)
        if timestamp_ms is None:
            timestamp_ms = now_ms()  # Kafka's default: create time
        log = logs[p]
        with self._broker.lock:
            log.append(Record(topic, p, len(log), value, key, timestamp_ms, tuple(headers)))
        self._pending += 1

    def flush(self, timeout_s: float | None = None) -> int:
        delivered, self._pending = self._pending, 0
        with self._broker.appended:
            self._broker.appended.notify_all()
        return delivered


class MemoryConsumer(LogConsumer):
    def __init__(self, broker: MemoryBroker, group, topics, instance_id, auto_offset_reset) -> None:
        super().__init__(group, topics, auto_offset_reset)
        self._broker = broker
        for t in topics:
            broker.info(t)
        self.member_id = instance_id or uuid.uuid4().hex
        if group is not None:
            with broker.lock:
                broker.members.setdefault(group, {})[self.member_id] = tuple(topics)

    def _group_assignment(self):
        return self._broker.assignment_of(self.group, self.member_id)

    def _fetch(self, tp, offset, limit):
        return self._broker.logs[tp][offset:offset + limit]

    def _wait(self, timeout_s):
        with self._broker.appended:
            self._broker.appended.wait(timeout_s)

    def _load_committed(self, tp):
        return self._broker.committed.get(self.group, {}).get(tp)

    def _store_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._broker.lock:
            self._broker.committed.setdefault(self.group, {}).update(offsets)

    def _end_offset(self, tp):
        return len(self._broker.logs[tp])

    def _leave(self):
        with self._broker.lock:
            self._broker.members.get(self.group, {}).pop(self.member_id, None)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = [TopicPartition(*tp) for tp in partitions]
        for tp in partitions:
            if tp not in self._broker.logs:
                raise UnknownTopicError(tp.topic)
        super().assign(partitions)


class MemoryBus(Bus):
    # ``broker`` is public: in-process companions (the runtime's checkpoint store) attach to it.
    def __init__(self, name: str = "") -> None:
        self.url = f"memory://{name}"
        self.broker = _NAMED.setdefault(name, MemoryBroker()) if name else MemoryBroker()

    def create_topic(self, name, partitions=DEFAULT_PARTITIONS, *, retention_ms=None) -> TopicInfo:
        return self.broker.create_topic(name, partitions, retention_ms)

    def topics(self) -> dict[str, TopicInfo]:
        return dict(self.broker.topics)

    def producer(self) -> Producer:
        return MemoryProducer(self.broker)

    def consumer(self, group, topics: Sequence[str] = (), *, instance_id=None, auto_offset_reset="earliest") -> Consumer:
        return MemoryConsumer(self.broker, group, topics, instance_id, auto_offset_reset)

    def end_offsets(self, topic: str) -> dict[int, int]:
        info = self.broker.info(topic)
        return {p: len(self.broker.logs[TopicPartition(topic, p)]) for p in range(info.partitions)}

    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        info = self.broker.info(topic)
        out = {}
        for p in range(info.partitions):
            log = self.broker.logs[TopicPartition(topic, p)]
            out[p] = next((r.offset for r in log if r.timestamp_ms >= timestamp_ms), len(log))
        return out

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        self.broker.info(topic)
        return {tp.partition: offset for tp, offset in self.broker.committed.get(group, {}).items() if tp.topic == topic}
