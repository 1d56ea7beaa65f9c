"""The Kafka backend (R2.2) on confluent-kafka: Apache Kafka, Redpanda, Tansu.

``kafka://host:port[,host:port][?option=value&librdkafka.prop=value]``; options are
:class:`KafkaOptions` (the ``[bus.kafka]`` settings plus two connection options), the URL's
query overriding them.

How it maps the bus contract onto Kafka:

- Keyed records get an explicit partition, :func:`partition_for` (Java's murmur2), computed
  here from a cache of partition counts; keyless ones go through librdkafka's
  ``murmur2_random`` partitioner. Topic metadata is always read for all topics at once, so a
  lookup never makes a broker auto-create a topic.
- A consumer's librdkafka handle is owned by a thread of its own that polls into a bounded
  buffer: rebalance callbacks only run inside librdkafka's poll, so two group members driven by
  one caller thread (a test, a process hosting several services) would otherwise stall each
  other's rebalance. Positions are what the caller received; a new assignment starts from
  :meth:`~KafkaConsumer.set_start_offsets`, else this member's position if it held the
  partition just before, else the group's commit, else ``auto_offset_reset``. Partitions are
  assigned round-robin, interleaved over the members as the other backends do.
- Commits are manual (after the handler's output is flushed) and run on the consumer's thread
  while the caller polls on; :meth:`~KafkaConsumer.committed`, ``close()`` and the next commit
  wait for them. A commit refused because a rebalance took the partition away is logged, not
  raised: delivery is at-least-once.

Tansu's gaps (see the project notes) are handled so that the same code is right on Kafka: its
ListOffsets answers "base offset of the last batch + 1" for the end of a partition and always 0
for a timestamp, so ends are read from the fetch path (the partition-EOF event carries the true
high watermark) and time lookups are verified against the records, falling back to a scan.
Its DescribeConfigs answers only the configs a topic was created with, so retention is read back
from the broker, else from what this bus created.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec
from pydantic import Field, ValidationError
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from tradepipe.bus.base import (
    DEFAULT_PARTITIONS, Bus, BusClosedError, BusError, BusUnavailableError, BusURLError, Consumer, Producer, Record,
    TopicInfo, TopicPartition, UnknownTopicError,
)
from tradepipe.bus.partitioner import partition_for
from tradepipe.config import KafkaSettings

log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

REQUEST_TIMEOUT_S = 30.0  # one admin request or metadata lookup
ASSIGNMENT_TIMEOUT_S = 30.0  # a group member's wait for its first assignment
FETCH_POLL_S = 0.005  # an idle consumer's thread wakes this often: its callers' commands (a commit) wait up to this
MAX_BUFFERED_RECORDS = 20_000  # a consumer's buffer bound (records, ...
MAX_BUFFERED_BYTES = 64 * 1024 * 1024  # ... and value bytes): beyond it fetching pauses
DRAIN_BATCH = 10_000  # records taken from librdkafka per call once one is ready
POLL_MASK = 1023  # producer: serve delivery reports every 1,024 sends
CLOSE_FLUSH_S = 30.0  # a producer's close waits this long for the broker

# Commit errors that mean "the partition moved during a rebalance": the next owner re-reads.
REBALANCE_COMMIT_ERRORS = {
    ck.KafkaError.REBALANCE_IN_PROGRESS, ck.KafkaError.ILLEGAL_GENERATION,
    ck.KafkaError.UNKNOWN_MEMBER_ID, ck.KafkaError._ASSIGNMENT_LOST,
}
# Errors that mean "the broker cannot be reached now": the call may be retried, nothing is lost.
UNAVAILABLE_ERRORS = {
    ck.KafkaError._TRANSPORT, ck.KafkaError._ALL_BROKERS_DOWN, ck.KafkaError._TIMED_OUT,
    ck.KafkaError.REQUEST_TIMED_OUT, ck.KafkaError.COORDINATOR_NOT_AVAILABLE, ck.KafkaError.NOT_COORDINATOR,
    ck.KafkaError._WAIT_COORD, ck.KafkaError.COORDINATOR_LOAD_IN_PROGRESS, ck.KafkaError.NETWORK_EXCEPTION,
}


def _error_class(exc: ck.KafkaException) -> type[BusError]:
    error = exc.args[0] if exc.args else None
    return BusUnavailableError if getattr(error, "code", lambda: None)() in UNAVAILABLE_ERRORS else BusError


UNKNOWN_TOPIC_ERRORS = {ck.KafkaError.UNKNOWN_TOPIC_OR_PART, ck.KafkaError._UNKNOWN_TOPIC,
                        ck.KafkaError._UNKNOWN_PARTITION}


class KafkaOptions(KafkaSettings):
    """The ``[bus.kafka]`` settings plus options that only a URL or caller sets."""

    connect_timeout_s: float = Field(30.0, gt=0, description="at start, keep retrying an unreachable broker "
                                     "this long (with backoff) before failing")
    static_membership: bool = Field(False, description="pass a consumer's instance_id as group.instance.id. "
                                    "Off by default: Tansu accepts it but then takes a fixed ~6 s for every "
                                    "join (3 s JoinGroup + 3 s SyncGroup, whatever session.timeout.ms) and "
                                    "a closed static member keeps its partitions until its session expires")


def parse_kafka_url(url: str, options: Mapping[str, Any] | None = None) -> tuple[str, KafkaOptions]:
    """``kafka://h:p[,h:p][?k=v]`` -> (bootstrap servers, options with the query on top).

    A query key ``librdkafka.<property>`` adds a raw librdkafka property."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "kafka" or not parts.netloc or parts.path not in ("", "/"):
        raise BusURLError(f"bad Kafka URL {url!r}: expected kafka://host:port[,host:port][?option=value]")
    for address in parts.netloc.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise BusURLError(f"bad Kafka URL {url!r}: {address!r} is not host:port")
    merged = dict(options or {})
    extra = dict(merged.get("librdkafka") or {})
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.startswith("librdkafka."):
            extra[name.removeprefix("librdkafka.")] = value
        else:
            merged[name] = value
    merged["librdkafka"] = extra
    try:
        return parts.netloc, KafkaOptions.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BusURLError(f"bad Kafka option in {url!r}: {problems}") from None


def _describe(error: ck.KafkaError | BaseException) -> str:
    if isinstance(error, ck.KafkaException) and error.args and isinstance(error.args[0], ck.KafkaError):
        error = error.args[0]
    if isinstance(error, ck.KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(error)


def start_fetching(consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
    """Assign exactly ``partitions`` (with offsets) and fetch at once: librdkafka looks up the
    leader of a topic it has not seen yet only at its next 1 s metadata scan, so ask for the
    topics' metadata first (each by name: ``allow.auto.create.topics`` is off)."""
    for topic in {tp.topic for tp in partitions}:
        consumer.list_topics(topic, timeout=REQUEST_TIMEOUT_S)
    consumer.assign(partitions)


def _log_client_error(error: ck.KafkaError) -> None:
    log.warning("Kafka client: %s", _describe(error))


class KafkaBus(Bus):
    """A Kafka cluster reached through librdkafka; see the module docstring."""

    def __init__(self, bootstrap: str, options: KafkaOptions | None = None, *, url: str | None = None) -> None:
        self.bootstrap = bootstrap
        self.options = options or KafkaOptions()
        self.url = url or f"kafka://{bootstrap}"
        self.address = f"kafka://{bootstrap}"  # for messages: the URL's query may hold credentials
        self._admin = AdminClient(self.client_config())
        self._partition_counts: dict[str, int] = {}
        self._created_retention: dict[str, int | None] = {}
        self._reader: ck.Consumer | None = None
        self._reader_lock = threading.Lock()
        self._wait_for_broker()

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> KafkaBus:
        bootstrap, parsed = parse_kafka_url(url, options)
        return cls(bootstrap, parsed, url=url)

    # -- client configuration -------------------------------------------------------------------
    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """Properties every client of this bus shares, then ``overrides``, then the user's
        ``librdkafka`` extras (which win: they are the escape hatch)."""
        return {"bootstrap.servers": self.bootstrap, "logger": librdkafka_log, "error_cb": _log_client_error,
                **overrides, **self.options.librdkafka}

    def producer_config(self) -> dict[str, Any]:
        o = self.options
        return self.client_config(**{
            "linger.ms": o.linger_ms, "batch.size": o.batch_size, "compression.type": o.compression,
            "acks": o.acks, "enable.idempotence": o.idempotence,
            "queue.buffering.max.messages": o.queue_max_messages, "message.max.bytes": o.message_max_bytes,
            "partitioner": "murmur2_random",  # keyless records only: keyed ones get partition_for
            "delivery.report.only.error": True,  # one Python callback per failure, not per record
            # retry until the broker is back (0 = no limit): records wait in the bounded queue,
            # and a full queue blocks send() (backpressure); a flush that takes too long raises
            # BusUnavailableError with the records still queued, so nothing is dropped
            "message.timeout.ms": 0,
        })

    def consumer_config(self, group: str | None, auto_offset_reset: str = "earliest", **overrides: Any) -> dict[str, Any]:
        o = self.options
        fetch_max = max(o.message_max_bytes, 52_428_800)
        return self.client_config(**{
            # librdkafka needs a group id even for a consumer that only assigns; it never joins it
            "group.id": group or f"tradepipe-unjoined-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset, "allow.auto.create.topics": False,
            # round-robin interleaves partitions over members like the other backends do (range would
            # give one member only the low partitions, which few keys may fill)
            "partition.assignment.strategy": "roundrobin",
            "session.timeout.ms": o.session_timeout_ms, "heartbeat.interval.ms": o.heartbeat_interval_ms,
            "fetch.wait.max.ms": o.fetch_wait_max_ms, "max.partition.fetch.bytes": o.message_max_bytes,
            "fetch.max.bytes": fetch_max, "receive.message.max.bytes": fetch_max + 1_048_576,
            **overrides,
        })

    def _wait_for_broker(self) -> None:
        """Fail clearly, after retries with backoff, if no broker answers."""
        started = time.monotonic()
        budget = self.options.connect_timeout_s
        retrying = Retrying(stop=stop_after_delay(budget), wait=wait_exponential(multiplier=0.2, max=5),
                            retry=retry_if_exception_type(ck.KafkaException))
        try:
            retrying(self._admin.list_topics, timeout=max(0.5, min(5.0, budget / 5)))  # several tries fit
        except RetryError as exc:
            attempts = exc.last_attempt.attempt_number
            raise BusError(f"{self.address}: broker not reachable after {attempts} attempts over "
                           f"{time.monotonic() - started:.0f} s: {_describe(exc.last_attempt.exception())}") from None

    # -- admin ----------------------------------------------------------------------------------
    def _result(self, future: Any, what: str) -> Any:
        try:
            return future.result(timeout=REQUEST_TIMEOUT_S)
        except ck.KafkaException as exc:
            raise _error_class(exc)(f"{self.address}: {what}: {_describe(exc)}") from None
        finally:
            self._admin.poll(0)  # serve the admin client's log lines

    def _metadata(self) -> dict[str, int]:
        """Partition count per topic, all topics at once (naming one topic could auto-create it)."""
        try:
            metadata = self._admin.list_topics(timeout=REQUEST_TIMEOUT_S)
        except ck.KafkaException as exc:
            raise _error_class(exc)(f"{self.address}: cannot read topic metadata: {_describe(exc)}") from None
        counts = {name: len(t.partitions) for name, t in metadata.topics.items()
                  if not name.startswith("__") and t.error is None}
        self._partition_counts.update(counts)
        return counts

    def partition_count(self, topic: str) -> int:
        """From the cache, refreshed on a miss (partition counts do not change here:
        Tansu cannot add partitions, and topics are created with their final count)."""
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._metadata().get(topic)
            if count is None:
                raise UnknownTopicError(topic)
        return count

    def create_topic(self, name: str, partitions: int = DEFAULT_PARTITIONS, *,
                     retention_ms: int | None = None) -> TopicInfo:
        if partitions < 1:
            raise ValueError(f"a topic needs at least one partition, not {partitions}")
        existing = self._metadata().get(name)
        if existing is not None:
            return TopicInfo(name, existing, self._retention([name])[name])
        config = {"retention.ms": str(-1 if retention_ms is None else retention_ms),
                  "max.message.bytes": str(self.options.message_max_bytes)}
        future = self._admin.create_topics([NewTopic(name, partitions, replication_factor=-1, config=config)],
                                           request_timeout=REQUEST_TIMEOUT_S)[name]
        try:
            future.result(timeout=REQUEST_TIMEOUT_S)
        except ck.KafkaException as exc:
            if exc.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:  # created meanwhile by someone else
                raise BusError(f"{self.address}: cannot create topic {name!r}: {_describe(exc)}") from None
            return self.topic(name)
        self._created_retention[name] = retention_ms
        self._await_topic(name)
        return TopicInfo(name, partitions, retention_ms)

    def _await_topic(self, name: str) -> None:
        """Until the metadata shows a new topic (on a cluster it reaches brokers one by one)."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while name not in self._metadata():
            if time.monotonic() > deadline:
                raise BusError(f"{self.address}: topic {name!r} was created but is not in the metadata "
                               f"after {REQUEST_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def _retention(self, names: Sequence[str]) -> dict[str, int | None]:
        """retention.ms per topic from the broker; a broker that describes no configs (Tansu,
        for topics created without any) falls back to what this bus created, else None."""
        out = {name: self._created_retention.get(name) for name in names}
        if not names:
            return out
        futures = self._admin.describe_configs([ConfigResource("topic", n) for n in names],
                                               request_timeout=REQUEST_TIMEOUT_S)
        for resource, future in futures.items():
            entry = self._result(future, f"describe configs of {resource.name!r}").get("retention.ms")
            if entry is not None and entry.value is not None:
                out[resource.name] = None if int(entry.value) < 0 else int(entry.value)
        return out

    def topics(self) -> dict[str, TopicInfo]:
        counts = self._metadata()
        retention = self._retention(sorted(counts))
        return {name: TopicInfo(name, count, retention[name]) for name, count in counts.items()}

    def topic(self, name: str) -> TopicInfo:
        """One topic: its configs alone are described, not every topic's."""
        count = self._metadata().get(name)
        if count is None:
            raise UnknownTopicError(name)
        return TopicInfo(name, count, self._retention([name])[name])

    def _list_offsets(self, tps: Sequence[ck.TopicPartition], spec: OffsetSpec) -> dict[int, int]:
        if not tps:
            return {}
        futures = self._admin.list_offsets({tp: spec for tp in tps}, request_timeout=REQUEST_TIMEOUT_S)
        return {tp.partition: self._result(f, f"list offsets of {tp.topic}[{tp.partition}]").offset
                for tp, f in futures.items()}

    def log_starts(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        return self._list_offsets([ck.TopicPartition(topic, p) for p in partitions], OffsetSpec.earliest())

    def true_ends(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The offset the next record of each partition gets.

        ListOffsets' answer (the high watermark) is read, then the partition is read from one
        before it to its end: the end-of-partition event carries the fetch path's high
        watermark. On Kafka that is the same number; on Tansu ListOffsets says "base offset of
        the last batch + 1", and this corrects it."""
        reported = self._list_offsets([ck.TopicPartition(topic, p) for p in partitions], OffsetSpec.latest())
        ends = {p: 0 for p, hwm in reported.items() if hwm <= 0}
        starts = {p: hwm - 1 for p, hwm in reported.items() if hwm > 0}
        if starts:
            with self._reading() as reader:
                start_fetching(reader, [ck.TopicPartition(topic, p, start) for p, start in starts.items()])
                for message in self._read(reader, len(starts)):
                    if message.error() is not None:  # the end of one partition
                        ends[message.partition()] = message.offset()
        return dict(sorted(ends.items()))

    def end_offsets(self, topic: str) -> dict[int, int]:
        return self.true_ends(topic, range(self.partition_count(topic)))

    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """The broker's answer where the records confirm it, else a scan of the partition."""
        partitions = range(self.partition_count(topic))
        answers = self._list_offsets([ck.TopicPartition(topic, p) for p in partitions],
                                     OffsetSpec.for_timestamp(timestamp_ms))
        ends = self.true_ends(topic, partitions)
        starts = self.log_starts(topic, partitions)
        out = {}
        for p in partitions:
            answer = answers[p]
            if answer < 0 or answer >= ends[p]:  # Kafka: no record that late
                out[p] = ends[p]
            elif self._first_at_or_after(topic, p, answer, timestamp_ms, starts[p]):
                out[p] = answer
            else:  # Tansu answers 0 whatever the time
                out[p] = self._scan_for_time(topic, p, timestamp_ms, starts[p], ends[p])
        return out

    def _first_at_or_after(self, topic: str, partition: int, offset: int, timestamp_ms: int, start: int) -> bool:
        """Whether ``offset`` is the first record of the partition stamped at or after ``timestamp_ms``."""
        first = offset - 1 if offset > start else offset
        before: int | None = None
        with self._reading() as reader:
            start_fetching(reader, [ck.TopicPartition(topic, partition, first)])
            for message in self._read(reader, 1):
                if message.error() is not None:
                    return False
                stamp = message.timestamp()[1]
                if message.offset() < offset:
                    before = stamp
                    continue
                return (message.offset() == offset and stamp >= timestamp_ms
                        and (first == offset or (before is not None and before < timestamp_ms)))
        return False

    def _scan_for_time(self, topic: str, partition: int, timestamp_ms: int, start: int, end: int) -> int:
        with self._reading() as reader:
            start_fetching(reader, [ck.TopicPartition(topic, partition, start)])
            for message in self._read(reader, 1):
                if message.error() is None and message.timestamp()[1] >= timestamp_ms:
                    return message.offset()
        return end

    @contextmanager
    def _reading(self) -> Iterator[ck.Consumer]:
        """The bus's group-less reader (end events on), for one caller at a time."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = ck.Consumer(self.consumer_config(None, "earliest", **{"enable.partition.eof": True}))
            try:
                yield self._reader
            finally:
                self._reader.unassign()

    def _read(self, reader: ck.Consumer, partitions: int) -> Iterator[ck.Message]:
        """Messages of the reader's assignment up to each partition's end, then the end events
        (messages whose error() is _PARTITION_EOF), until ``partitions`` ends were seen."""
        seen = 0
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while seen < partitions:
            first = reader.poll(FETCH_POLL_S)
            if first is None:
                if time.monotonic() > deadline:
                    raise BusUnavailableError(f"{self.address}: no answer to a fetch after {REQUEST_TIMEOUT_S:.0f} s")
                continue
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            for message in [first, *reader.consume(DRAIN_BATCH, 0)]:
                error = message.error()
                if error is not None:
                    if error.code() != ck.KafkaError._PARTITION_EOF:
                        raise BusError(f"{self.address}: reading {message.topic()}[{message.partition()}]: "
                                       f"{_describe(error)}")
                    seen += 1
                yield message

    def committed_offsets(self, group: str, topic: str, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Per partition (all, or ``partitions``), ``group``'s committed offset on ``topic``."""
        count = self.partition_count(topic)
        partitions = [ck.TopicPartition(topic, p) for p in (range(count) if partitions is None else partitions)]
        request = ck.ConsumerGroupTopicPartitions(group, partitions)
        future = self._admin.list_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[group]
        answer = self._result(future, f"committed offsets of group {group!r}")
        return {tp.partition: tp.offset for tp in answer.topic_partitions if tp.offset >= 0}

    # -- clients --------------------------------------------------------------------------------
    def producer(self) -> KafkaProducer:
        return KafkaProducer(self)

    def consumer(self, group: str | None, topics: Sequence[str] = (), *, instance_id: str | None = None,
                 auto_offset_reset: str = "earliest") -> KafkaConsumer:
        return KafkaConsumer(self, group, topics, instance_id=instance_id, auto_offset_reset=auto_offset_reset)

    def starting_offsets(self, tps: Sequence[TopicPartition], auto_offset_reset: str) -> dict[TopicPartition, int]:
        """Where partitions without a commit start: the log start, or the (true) end."""
        out: dict[TopicPartition, int] = {}
        for topic in {tp.topic for tp in tps}:
            partitions = [tp.partition for tp in tps if tp.topic == topic]
            found = (self.log_starts(topic, partitions) if auto_offset_reset == "earliest"
                     else self.true_ends(topic, partitions))
            out.update({TopicPartition(topic, p): offset for p, offset in found.items()})
        return out

    def close(self) -> None:
        """Close the clients now rather than at garbage collection (a broker waits for open
        connections when it shuts down)."""
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self._admin = None


class KafkaProducer(Producer):
    """One librdkafka producer: batching, compression and retries are librdkafka's.

    ``send`` is one ``produce`` call; delivery reports come back only for failures
    (``delivery.report.only.error``) and are collected until :meth:`flush`."""

    def __init__(self, bus: KafkaBus) -> None:
        self._bus = bus
        self._counts = bus._partition_counts  # shared cache, filled by bus.partition_count
        self.config = bus.producer_config()
        self._producer = ck.Producer({**self.config, "on_delivery": self._on_delivery})
        self._produce = self._producer.produce
        self._queued = 0
        self._failures: list[tuple[ck.KafkaError, str, int]] = []

    def _on_delivery(self, error: ck.KafkaError | None, message: ck.Message) -> None:
        if error is not None:
            self._failures.append((error, message.topic(), message.partition()))

    def send(self, topic: str, value: bytes, key: bytes | None = None, *, timestamp_ms: int | None = None,
             headers: Sequence[tuple[str, bytes]] = (), partition: int | None = None) -> None:
        count = self._counts.get(topic) or self._bus.partition_count(topic)
        if partition is None:
            partition = -1 if key is None else partition_for(key, count)  # -1: librdkafka's partitioner
        elif not 0 <= partition < count:
            raise ValueError(f"partition {partition} out of range for {topic!r} ({count} partitions)")
        if headers.__class__ is not list:  # confluent-kafka takes a list (or a dict)
            headers = list(headers) if headers else None
        try:
            # timestamp 0 means "now" to librdkafka
            self._produce(topic, value, key, partition=partition, timestamp=timestamp_ms or 0, headers=headers)
        except BufferError:
            self._produce_when_room(topic, value, key, partition, timestamp_ms or 0, headers)
        self._queued += 1
        if not self._queued & POLL_MASK:
            self._producer.poll(0)

    def _produce_when_room(self, topic: str, value: bytes, key: bytes | None, partition: int,
                           timestamp: int, headers: list | None) -> None:
        """The local queue is full (queue_max_messages): wait for the broker to take some,
        serving delivery reports meanwhile (backpressure rather than failure)."""
        while True:
            self._producer.poll(0.05)
            try:
                self._produce(topic, value, key, partition=partition, timestamp=timestamp, headers=headers)
                return
            except BufferError:
                continue

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait until every queued record is acknowledged or has failed; raise with the broker's
        reason if any failed, or BusUnavailableError (records kept) after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (remaining := self._producer.flush(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))) > 0:
            if deadline is not None and time.monotonic() >= deadline:
                raise BusUnavailableError(f"{self._bus.address}: {remaining} records not acknowledged after "
                                          f"{timeout_s:g} s (still queued; the broker may be down)")
        queued, self._queued = self._queued, 0
        failures, self._failures = self._failures, []
        if failures:
            topics = {topic for _, topic, _ in failures}
            if all(e.code() in UNKNOWN_TOPIC_ERRORS for e, _, _ in failures) and len(topics) == 1:
                raise UnknownTopicError(topics.pop())
            reasons: dict[str, int] = {}
            for error, topic, partition in failures:
                reason = f"{_describe(error)} ({topic}[{partition}])"
                reasons[reason] = reasons.get(reason, 0) + 1
            detail = "; ".join(f"{n} x {reason}" for reason, n in reasons.items())
            raise BusError(f"{self._bus.address}: {len(failures)} of {queued} records not delivered: {detail}")
        return queued

    def close(self) -> None:
        """Deliver what is queued, waiting at most CLOSE_FLUSH_S: with the broker gone a close
        must not hang. Records still queued then are dropped, which is safe for a runner: it
        commits inputs only after their outputs were delivered, so a restart re-makes them."""
        if self._producer is None:
            return
        try:
            self.flush(CLOSE_FLUSH_S)
        except BusUnavailableError as exc:
            log.warning("closing the producer without delivering everything: %s", exc)
        self._producer = None
        self._produce = _refuse_closed  # librdkafka's producer goes with its last reference


def _refuse_closed(*args: object, **kwargs: object) -> None:
    raise BusClosedError("producer is closed")


class KafkaConsumer(Consumer):
    """A librdkafka consumer owned by a thread of its own (see the module docstring).

    confluent-kafka serializes the calls on one consumer handle, and a poll holds it for its
    whole wait, so the thread is the only caller of the handle: it polls into ``_buffer``
    (as :class:`Record`), pausing the fetch while the buffer is full, runs the rebalance
    callbacks that keep ``_positions`` (what the caller received) and the buffer in step with
    the assignment, and between two polls runs what the caller asked for (commit, seek, ...)
    through :meth:`_call`."""

    def __init__(self, bus: KafkaBus, group: str | None, topics: Sequence[str], *, instance_id: str | None = None,
                 auto_offset_reset: str = "earliest") -> None:
        if auto_offset_reset not in ("earliest", "latest"):
            raise ValueError(f"auto_offset_reset must be 'earliest' or 'latest', not {auto_offset_reset!r}")
        for topic in topics:
            bus.partition_count(topic)
        self._bus = bus
        self.group = group
        self.subscription = tuple(topics)
        self._reset = auto_offset_reset
        self._lock = threading.Condition()
        self._buffer: list[Record] = []
        self._buffered_bytes = 0
        self._positions: dict[TopicPartition, int] = {}
        self._start_offsets: dict[TopicPartition, int] = {}
        self._kept: dict[TopicPartition, int] = {}  # positions across a rebalance
        self._assigned = group is None or not topics  # whether the first assignment arrived
        self._failure: BaseException | None = None
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._paused = False
        self._pending_commit: Future | None = None  # the commit loop the consumer's thread runs
        self._commit_wanted: dict[TopicPartition, int] = {}  # offsets asked for, not yet committed
        self._commit_scheduled = False  # whether a commit loop is queued or running
        self._closed = False
        self._stopping = threading.Event()
        overrides = {}
        if group is not None and instance_id and bus.options.static_membership:
            overrides["group.instance.id"] = instance_id
        self._consumer = ck.Consumer(bus.consumer_config(group, auto_offset_reset, **overrides))
        if group is not None and topics:
            self._consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_lost)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"kafka-consumer-{group or 'unjoined'}")
        self._thread.start()

    # -- the consumer's thread ------------------------------------------------------------------
    def _run(self) -> None:
        consumer = self._consumer
        try:
            while not self._stopping.is_set():
                self._run_commands()
                with self._lock:
                    fill = max(len(self._buffer) / MAX_BUFFERED_RECORDS, self._buffered_bytes / MAX_BUFFERED_BYTES)
                if not self._paused and fill >= 1:
                    consumer.pause(consumer.assignment())
                    self._paused = True
                elif self._paused and fill < 0.5:  # hysteresis: a pause drops librdkafka's prefetched records
                    self._resume()
                first = consumer.poll(FETCH_POLL_S)  # rebalance callbacks run in here
                if first is not None:
                    self._keep([first, *consumer.consume(DRAIN_BATCH, 0)])
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's next call
            log.exception("Kafka consumer of group %r stopped", self.group)
            with self._lock:
                self._failure = exc
                self._lock.notify_all()
        finally:
            self._run_commands(BusClosedError("consumer is closed") if self._failure is None else self._failure)

    def _resume(self) -> None:
        """Fetch again from where the buffer ends. The seeks are what restart the fetch at once:
        after a bare resume librdkafka's broker thread sleeps up to a second before fetching."""
        assignment = self._consumer.assignment()
        self._consumer.resume(assignment)
        with self._lock:
            following = dict(self._positions)
            for r in self._buffer:
                following[r.topic, r.partition] = r.offset + 1
        for tp in assignment:
            offset = following.get((tp.topic, tp.partition))
            if offset is not None:
                self._consumer.seek(ck.TopicPartition(tp.topic, tp.partition, offset))
        self._paused = False

    def _run_commands(self, refuse: BaseException | None = None) -> None:
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if refuse is not None:
                future.set_exception(refuse)
                continue
            try:
                future.set_result(command())
            except Exception as exc:  # noqa: BLE001 - raised in the caller's thread
                future.set_exception(exc)

    def _call(self, command: Callable[[], Any]) -> Any:
        """Run ``command`` on the consumer's thread (between two polls) and return its result."""
        if threading.current_thread() is self._thread:
            return command()
        return self._submit(command).result(timeout=REQUEST_TIMEOUT_S + 5)

    def _submit(self, command: Callable[[], Any]) -> Future:
        """Queue ``command`` for the consumer's thread; its future holds the outcome."""
        future: Future = Future()
        self._commands.put((command, future))
        if not self._thread.is_alive():  # it may have stopped before seeing the command
            self._run_commands(BusClosedError("consumer is closed") if self._failure is None else self._failure)
        return future

    def _settle_commit(self) -> None:
        """Wait for the commit in flight, raising its failure."""
        pending, self._pending_commit = self._pending_commit, None
        if pending is not None:
            pending.result(timeout=REQUEST_TIMEOUT_S + 5)

    def _keep(self, messages: list[ck.Message]) -> None:
        records: list[Record] = []
        append = records.append
        size = 0
        for m in messages:
            error = m.error()
            if error is not None:
                if error.fatal():
                    raise ck.KafkaException(error)
                log.warning("Kafka consumer of group %r: %s", self.group, _describe(error))
                continue
            value = m.value()
            if value is None:  # a tombstone from another client
                value = b""
            size += len(value)
            headers = m.headers()
            if headers is None:
                headers = ()
            else:
                for _, v in headers:
                    if v is None:  # librdkafka gives None for a null header value
                        headers = [(k, b"" if v is None else v) for k, v in headers]
                        break
                headers = tuple(headers)
            append(Record(m.topic(), m.partition(), m.offset(), value, m.key(), m.timestamp()[1], headers))
        with self._lock:
            self._buffer.extend(records)
            self._buffered_bytes += size
            self._lock.notify_all()

    def _on_assign(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        """Start each partition at set_start_offsets' offset, else where this member was if it
        had it just before (nobody else can have read it in between), else the group's commit,
        else auto_offset_reset."""
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        with self._lock:
            kept, self._kept = self._kept, {}
            starts = {tp: self._start_offsets.pop(tp) for tp in tps if tp in self._start_offsets}
        starts.update({tp: kept[tp] for tp in tps if tp in kept and tp not in starts})
        unset = [ck.TopicPartition(tp.topic, tp.partition) for tp in tps if tp not in starts]
        if unset:
            for c in consumer.committed(unset, timeout=REQUEST_TIMEOUT_S):
                if c.offset >= 0:
                    starts[TopicPartition(c.topic, c.partition)] = c.offset
        fresh = [tp for tp in tps if tp not in starts]
        if fresh:
            starts.update(self._bus.starting_offsets(fresh, self._reset))
        self._assign(starts)
        with self._lock:
            self._assigned = True
            self._lock.notify_all()

    def _on_revoke(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        """Eager rebalance: everything is revoked, then reassigned; remember the positions for
        the partitions that come back."""
        self._forget(partitions, keep=True)

    def _on_lost(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        """The session expired: others may own these partitions now, so resume from commits."""
        self._forget(partitions, keep=False)

    def _forget(self, partitions: list[ck.TopicPartition], *, keep: bool) -> None:
        gone = {TopicPartition(p.topic, p.partition) for p in partitions}
        with self._lock:
            for tp in gone:
                position = self._positions.pop(tp, None)
                if keep and position is not None:
                    self._kept[tp] = position
            self._drop_buffered(gone)

    def _drop_buffered(self, tps: set[TopicPartition]) -> None:
        """Forget fetched records of ``tps``; the caller holds the lock."""
        self._buffer = [r for r in self._buffer if (r.topic, r.partition) not in tps]
        self._buffered_bytes = sum(len(r.value) for r in self._buffer)

    def _assign(self, starts: Mapping[TopicPartition, int]) -> None:
        """Read exactly these partitions from these offsets (on the consumer's thread)."""
        with self._lock:
            self._drop_buffered(set(self._positions) | set(starts))
            self._positions = dict(starts)
        start_fetching(self._consumer, [ck.TopicPartition(tp.topic, tp.partition, o) for tp, o in starts.items()])
        self._paused = False  # a new assignment starts unpaused

    def _seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Move assigned partitions (on the consumer's thread, so no fetch is in flight)."""
        with self._lock:
            self._drop_buffered(set(offsets))
            self._positions.update(offsets)
        for tp, offset in offsets.items():
            self._consumer.seek(ck.TopicPartition(tp.topic, tp.partition, offset))

    # -- Consumer -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise BusClosedError("consumer is closed")
        if self._failure is not None:
            raise BusError(f"{self._bus.address}: consumer of group {self.group!r} failed: "
                           f"{_describe(self._failure)}") from self._failure

    def _await_assignment(self) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: self._assigned or self._failure is not None, ASSIGNMENT_TIMEOUT_S):
                raise BusError(f"{self._bus.address}: group {self.group!r} assigned no partitions to this "
                               f"consumer within {ASSIGNMENT_TIMEOUT_S:.0f} s")
        self._check_open()

    def poll(self, max_records: int = 500, timeout_s: float = 0.0) -> list[Record]:
        self._check_open()
        with self._lock:
            if not self._buffer and timeout_s > 0:
                self._lock.wait_for(lambda: self._buffer or self._failure is not None, timeout_s)
            self._check_open()
            taken = self._buffer[:max_records]
            del self._buffer[:max_records]
            positions = self._positions
            size = 0
            for r in taken:
                positions[r.topic, r.partition] = r.offset + 1
                size += len(r.value)
            self._buffered_bytes -= size
        return taken

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Only partitions still assigned (others belong to another member now). The commit
        runs on the consumer's thread while the caller goes on polling; the next commit,
        ``committed()`` and ``close()`` wait for it and raise its failure (a caller's thread
        waiting for each commit would wait for the thread's poll as well)."""
        self._check_open()
        if self.group is None:
            raise BusError("a consumer without a group has nothing to commit to")
        self._await_assignment()
        pending = self._pending_commit
        if pending is not None and pending.done():
            self._settle_commit()  # raise a failure of the last one
        with self._lock:  # the positions of now, not of when the thread gets to it
            self._commit_wanted.update(dict(self._positions) if offsets is None
                                       else {TopicPartition(*tp): o for tp, o in offsets.items()})
            if self._commit_scheduled:  # the thread's commit loop will take these too
                return
            self._commit_scheduled = True
        self._pending_commit = self._submit(self._commit_wanted_offsets)

    def _commit_wanted_offsets(self) -> None:
        """On the consumer's thread: commit what callers asked for, until nothing is left (a
        caller's commit while one is in flight joins the next round instead of waiting)."""
        try:
            while True:
                with self._lock:
                    offsets, self._commit_wanted = self._commit_wanted, {}
                    if not offsets:
                        self._commit_scheduled = False
                        return
                self._commit(offsets)
        except BaseException:
            with self._lock:
                self._commit_scheduled = False
            raise

    def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._lock:
            chosen = {tp: o for tp, o in offsets.items() if tp in self._positions}
        if not chosen:
            return
        try:
            answer = self._consumer.commit(offsets=[ck.TopicPartition(t, p, o) for (t, p), o in chosen.items()],
                                           asynchronous=False)
        except ck.KafkaException as exc:
            if exc.args[0].code() in REBALANCE_COMMIT_ERRORS:
                log.info("commit of group %r skipped, a rebalance moved its partitions: %s", self.group, _describe(exc))
                return
            raise _error_class(exc)(f"{self._bus.address}: commit of group {self.group!r} failed: {_describe(exc)}") from None
        failed = [tp for tp in answer or () if tp.error is not None]
        if failed:
            raise BusError(f"{self._bus.address}: commit of group {self.group!r} failed for "
                           + ", ".join(f"{tp.topic}[{tp.partition}]: {_describe(tp.error)}" for tp in failed))

    def committed(self, tp: TopicPartition) -> int | None:
        """Asked through the bus's admin client: the consumer's own OffsetFetch waits while its
        group is (re)joining, ~1.5 s a call on Tansu."""
        if self.group is None:
            return None
        self._check_open()
        self._settle_commit()
        return self._bus.committed_offsets(self.group, tp[0], [tp[1]]).get(tp[1])

    def position(self, tp: TopicPartition) -> int:
        self._await_assignment()
        with self._lock:
            try:
                return self._positions[tp]
            except KeyError:
                raise BusError(f"{tp} is not assigned to this consumer") from None

    def positions(self) -> dict[TopicPartition, int]:
        with self._lock:
            return dict(self._positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self._check_open()
        tp = TopicPartition(*tp)
        with self._lock:
            if tp not in self._positions:
                raise BusError(f"cannot seek {tp}: not assigned to this consumer")
        self._call(lambda: self._seek({tp: offset}))

    def assignment(self) -> frozenset[TopicPartition]:
        self._check_open()
        self._await_assignment()
        with self._lock:
            return frozenset(self._positions)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._check_open()
        if self.group is not None:
            raise BusError("assign() is for consumers without a group; a group assigns partitions itself")
        tps = [TopicPartition(*tp) for tp in partitions]
        for tp in tps:
            count = self._bus.partition_count(tp.topic)
            if not 0 <= tp.partition < count:
                raise BusError(f"{tp}: {tp.topic!r} has {count} partitions")
        with self._lock:
            starts = {tp: self._start_offsets.pop(tp) for tp in tps if tp in self._start_offsets}
        starts.update(self._bus.starting_offsets([tp for tp in tps if tp not in starts], self._reset))
        self._call(lambda: self._assign(starts))

    def set_start_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._lock:
            self._start_offsets = {TopicPartition(*tp): o for tp, o in offsets.items()}
            assigned = {tp: self._start_offsets.pop(tp) for tp in list(self._start_offsets) if tp in self._positions}
        if assigned:
            self._call(lambda: self._seek(assigned))

    def close(self) -> None:
        """Leave the group (librdkafka's close sends LeaveGroup); commit nothing."""
        if self._closed:
            return
        try:
            self._settle_commit()  # a commit asked for before the close is made
        except Exception as exc:  # noqa: BLE001 - closing anyway: the next owner re-reads from the last commit
            log.warning("Kafka consumer of group %r closed with its last commit failed: %s", self.group, exc)
        self._closed = True
        self._stopping.set()
        self._thread.join()
        try:
            self._consumer.close()
        except (ck.KafkaException, RuntimeError) as exc:
            log.warning("closing Kafka consumer of group %r: %s", self.group, _describe(exc))
        with self._lock:
            self._buffer = []
            self._buffered_bytes = 0


__all__ = ["KafkaBus", "KafkaConsumer", "KafkaOptions", "KafkaProducer", "parse_kafka_url"]
