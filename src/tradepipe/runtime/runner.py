"""Service runners (R3.1, R3.2): consume -> decode -> dedupe -> handle -> publish -> commit.

:class:`ServiceRunner` does it synchronously in the calling thread (backtests, the embedded
default); :class:`AsyncServiceRunner` drives the same steps from asyncio, doing the blocking
bus calls in a worker thread (network transports). Both keep these promises:

- a record that does not decode goes to ``dead-letter`` with the reason and its bytes;
- an event whose id was seen lately is skipped (upstream re-deliveries);
- a handler that raises is retried with exponential backoff, then dead-lettered;
- while the broker is unreachable the runner stops consuming and retries the failed bus call
  with backoff (its outputs stay queued in the producer: nothing is lost); the bus breaker
  opens, and its transitions are published as CircuitBreakerStateChanged once it is back;
- outputs are flushed before the group commit that covers their inputs (after every batch),
  and a checkpoint saves the service snapshot together with the input positions;
- on start, a service restores its last checkpoint and resumes from its positions;
- it counts each record's topic and handling time, and keeps its positions after each poll,
  in a :class:`RunnerMeter` that a host's /metrics reads (no Prometheus object per event).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TypeVar

import msgspec
from tenacity import Retrying, stop_after_attempt, wait_exponential

from tradepipe.bus.base import DEFAULT_PARTITIONS, Bus, BusUnavailableError, Record, TopicPartition, now_ms
from tradepipe.events.codec import Codec, DecodeError, JsonCodec
from tradepipe.events.envelope import Event, utc_from_ms
from tradepipe.events.types import ALL_TOPICS, CircuitBreakerStateChanged, DeadLetter
from tradepipe.runtime.breaker import CircuitBreaker, Transition
from tradepipe.runtime.clock import Clock, EventClock, WallClock
from tradepipe.runtime.service import Context, Service
from tradepipe.runtime.store import Checkpoint, CheckpointStore, checkpoint_store_for, publish


class RunnerConfig(msgspec.Struct, frozen=True, kw_only=True):
    batch_size: int = 500  # records per poll; outputs of a batch are flushed together
    poll_timeout_s: float = 0.1
    checkpoint_every: int = 1000  # events handled between checkpoints
    max_attempts: int = 3  # handler attempts before an event is dead-lettered
    retry_initial_s: float = 0.01
    retry_max_s: float = 1.0
    # Must cover what an upstream producer can re-deliver after its own crash: at most its
    # checkpoint interval times its fan-out.
    dedup_window: int = 10_000
    flush_timeout_s: float = 10.0  # a flush slower than this counts as a bus failure (then retried)
    bus_retry_max_s: float = 5.0  # longest wait between retries while the broker is unreachable


log = logging.getLogger(__name__)
T = TypeVar("T")


class RunnerStats(msgspec.Struct):
    handled: int = 0
    emitted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    checkpoints: int = 0
    bus_failures: int = 0  # bus calls that failed because the broker was unreachable


class Buckets:
    """A histogram as plain counts (``observe``: a bisect and two additions); collectors turn
    it into a Prometheus histogram at scrape time (:mod:`tradepipe.ops.metrics`)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bound i counts values <= bounds[i]
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of values <= le)`` per bound, then ``("+Inf", all)``."""
        counts = list(self.counts)  # one copy: the owner may be counting meanwhile
        total, out = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts):
            total += count
            out.append((bound, total))
        return out


#: handler time buckets (seconds): fine below a millisecond, where handlers live, and one
#: bound at the alert threshold's 100 ms
PROCESSING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class RunnerMeter:
    """What a runner counts per record for its /metrics (served by
    :class:`tradepipe.ops.metrics.ServiceCollector`): plain numbers, no lock on the hot path."""

    __slots__ = ("processed", "seconds", "positions")

    def __init__(self) -> None:
        self.processed: dict[str, int] = {}  # records handled per input topic
        self.seconds = Buckets(PROCESSING_BUCKETS)  # per record: decode, dedupe, handle
        #: next offset per assigned partition after the last poll, replaced whole (never
        #: mutated), so a scrape in another thread reads one consistent snapshot
        self.positions: dict[TopicPartition, int] = {}

    def record(self, topic: str, seconds: float) -> None:
        processed = self.processed
        processed[topic] = processed.get(topic, 0) + 1
        self.seconds.observe(seconds)


class DedupWindow:
    """The last ``size`` event ids seen, for skipping re-deliveries in O(1)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._order: deque[bytes] = deque()
        self._seen: set[bytes] = set()

    def add(self, event_id: bytes) -> bool:
        """Remember ``event_id``; False if it was already there."""
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self._size:
            self._seen.discard(self._order.popleft())
        return True

    def dump(self) -> bytes:
        return b"".join(self._order)

    def load(self, data: bytes) -> None:
        self._order.clear()
        self._seen.clear()
        for i in range(0, len(data), 16):
            self.add(data[i:i + 16])


def ensure_topics(bus: Bus, topics: Iterable[str] = ALL_TOPICS, partitions: int = DEFAULT_PARTITIONS,
                  retention_ms: Mapping[str, int | None] | None = None) -> None:
    """Create the pipeline's topics if missing, with ``retention_ms`` per topic (absent: keep
    forever); idempotent: existing topics keep theirs."""
    retention_ms = retention_ms or {}
    for topic in topics:
        bus.create_topic(topic, partitions, retention_ms=retention_ms.get(topic))


class ServiceRunner:
    """Runs one instance of a service against a bus in the calling thread.

    ``instance_id`` names this instance (Kafka's static membership): a restart with the same
    id takes over its partitions at once and restores its checkpoint. Run several instances
    of one service with distinct ids. Handlers must not change their state before they can
    fail: a failed attempt is retried on the same state.
    """

    def __init__(
        self,
        service: Service,
        bus: Bus,
        *,
        group: str | None = None,
        codec: Codec | None = None,
        checkpoints: CheckpointStore | None = None,
        config: RunnerConfig = RunnerConfig(),
        clock: Clock | None = None,
        instance_id: str | None = None,
    ) -> None:
        if not service.inputs:
            raise ValueError(f"service {service.name!r} declares no input topics")
        self.service = service
        self.bus = bus
        self.group = group or service.name
        self.codec = codec or JsonCodec()
        self.config = config
        self.instance_id = instance_id or f"{service.name}-0"
        self._owns_checkpoints = checkpoints is None
        self.checkpoints = checkpoints or checkpoint_store_for(bus)
        self.ctx = Context(service.name, clock or EventClock())
        self._live = isinstance(self.ctx.clock, WallClock)
        self.stats = RunnerStats()
        self.meter = RunnerMeter()
        self._dedup = DedupWindow(config.dedup_window)
        self._since_checkpoint = 0
        self._lifetime_handled = 0
        self.consumer = bus.consumer(self.group, service.inputs, instance_id=self.instance_id)
        self.producer = bus.producer()
        self.bus_breaker = CircuitBreaker(f"bus:{self.group}", threshold=3,
                                          recovery=timedelta(seconds=config.bus_retry_max_s))
        self._transitions: list[Transition] = []  # to publish once the bus takes events again
        self.stopping = threading.Event()  # set by a host to end retries on shutdown
        self._retrying = Retrying(
            stop=stop_after_attempt(config.max_attempts),
            wait=wait_exponential(multiplier=config.retry_initial_s, max=config.retry_max_s),
            before_sleep=self._count_retry,
            reraise=True,
        )
        self._restore()

    # -- lifecycle --------------------------------------------------------------------------
    def _restore(self) -> None:
        checkpoint = self.checkpoints.load(self.service.name, self.group, self.instance_id)
        if checkpoint is None:
            return
        self.service.restore(checkpoint.state)
        self._dedup.load(checkpoint.seen_ids)
        self._lifetime_handled = checkpoint.handled
        self.consumer.set_start_offsets(checkpoint.position_map())

    def _on_bus(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff while the broker is unreachable (the runner does
        nothing else meanwhile: backpressure). The bus breaker records the outage."""
        delay = self.config.retry_initial_s
        while True:
            try:
                result = call()
            except BusUnavailableError as exc:
                self.stats.bus_failures += 1
                self._note(self.bus_breaker.failure(datetime.now(timezone.utc), f"{what}: {exc}"))
                if self.stopping.is_set():
                    raise
                log.warning("%s: bus unavailable (%s: %s); retrying in %.2f s", self.service.name, what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.config.bus_retry_max_s)
                continue
            if self.bus_breaker.state != "CLOSED":
                self._note(self.bus_breaker.success())
            return result

    def _note(self, transition: Transition | None) -> None:
        if transition is not None:
            log.warning("%s: %s %s -> %s (%s)", self.service.name, transition.breaker, transition.from_state,
                        transition.to_state, transition.reason)
            self._transitions.append(transition)

    def _flush(self) -> None:
        self._on_bus("flush", lambda: self.producer.flush(self.config.flush_timeout_s))

    def _breaker_events(self) -> list[Event]:
        """The bus breaker's transitions since the last batch, as events (wall time: they are
        about this process, not about the data)."""
        events = []
        for transition in self._transitions:
            now = datetime.now(timezone.utc)
            self.ctx.begin(None, key=f"breaker|{self.instance_id}|{now.isoformat()}|{transition.to_state}".encode())
            events.append(self.ctx.emit(CircuitBreakerStateChanged, timestamp=now, breaker=transition.breaker,
                                        from_state=transition.from_state, to_state=transition.to_state,
                                        failures=transition.failures, reason=transition.reason))
        self._transitions.clear()
        return events

    def checkpoint(self) -> Checkpoint:
        """Snapshot state + positions + dedup window in one write, then commit the positions."""
        self._flush()
        positions = self.consumer.positions()  # as of the last poll: what the state reflects
        checkpoint = Checkpoint(
            positions=[(tp.topic, tp.partition, offset) for tp, offset in sorted(positions.items())],
            state=self.service.snapshot(),
            seen_ids=self._dedup.dump(),
            handled=self._lifetime_handled,
            saved_ms=now_ms(),
        )
        self.checkpoints.save(self.service.name, self.group, self.instance_id, checkpoint)
        if positions:
            self._on_bus("commit", lambda: self.consumer.commit(positions))
        self._since_checkpoint = 0
        self.stats.checkpoints += 1
        return checkpoint

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
        if self._owns_checkpoints:
            self.checkpoints.close()

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> int:
        """Poll one batch, handle it, publish its outputs; checkpoint when due. Returns the
        number of records polled (0 when there was nothing)."""
        records = self._on_bus("poll", lambda: self.consumer.poll(self.config.batch_size, self.config.poll_timeout_s))
        self.meter.positions = self.consumer.positions()
        if records:
            self.handle_batch(records)
        elif self._live:
            self._on_timer()
        return len(records)

    def _on_timer(self) -> None:
        """Live only: let the service act on the passing of time (e.g. flush idle bars)."""
        now = self.ctx.now()
        self.ctx.begin(None, key=f"timer|{self.instance_id}|{now.isoformat()}".encode())
        outputs = list(self.service.on_timer(self.ctx))
        if outputs:
            self.stats.emitted += publish(self.producer, self.codec, outputs)
            self._flush()

    def run(self, *, until_idle: bool = False, stop: threading.Event | None = None) -> RunnerStats:
        """Loop until ``stop`` is set or, with ``until_idle``, until every assigned partition
        is read to its end; always ends with a checkpoint."""
        while stop is None or not stop.is_set():
            if self.step() == 0 and until_idle and self.caught_up():
                break
        self.checkpoint()
        return self.stats

    def caught_up(self) -> bool:
        assignment = self.consumer.assignment()
        ends: dict[str, dict[int, int]] = {}
        for tp in assignment:
            if tp.topic not in ends:
                ends[tp.topic] = self._on_bus("end offsets", lambda: self.bus.end_offsets(tp.topic))
            end = ends[tp.topic][tp.partition]
            if self.consumer.position(tp) < end:
                return False
        return True

    def handle_batch(self, records: list[Record]) -> None:
        """Handle polled records, publish their outputs and dead letters, checkpoint if due."""
        outputs: list[Event] = self._breaker_events() if self._transitions else []
        record_meter, clock = self.meter.record, time.perf_counter
        for record in records:
            started = clock()
            outputs.extend(self._handle_record(record))
            record_meter(record.topic, clock() - started)
        self.stats.emitted += publish(self.producer, self.codec, outputs)
        self._flush()
        if self._since_checkpoint >= self.config.checkpoint_every:
            self.checkpoint()
        else:
            # outputs are acknowledged: the group may move on (lag tools and the lockstep replay
            # read this); a restart still resumes from the checkpoint, which is never ahead of it
            positions = self.meter.positions  # taken after the poll of this batch (nothing polled since)
            self._on_bus("commit", lambda: self.consumer.commit(positions))

    def _handle_record(self, record: Record) -> list[Event]:
        try:
            event = self.codec.decode(record.value)
        except DecodeError as exc:
            return [self._dead_letter(record, None, exc.reason, "decode-error")]
        if not self._dedup.add(event.event_id.bytes):
            self.stats.duplicates += 1
            return []
        self._since_checkpoint += 1
        self._lifetime_handled += 1
        self.stats.handled += 1
        try:
            return self._retrying(self._attempt, event)
        except Exception as exc:  # a poison event must not stop the service
            return [self._dead_letter(record, event, f"{type(exc).__name__}: {exc}", "handler-error")]

    def _attempt(self, event: Event) -> list[Event]:
        self.ctx.begin(event)
        return list(self.service.handle(event, self.ctx))

    def _count_retry(self, _state) -> None:
        self.stats.retries += 1

    def _dead_letter(self, record: Record, event: Event | None, reason: str, kind: str) -> DeadLetter:
        self.stats.dead_lettered += 1
        key = f"dead-letter|{record.topic}|{record.partition}|{record.offset}".encode()
        self.ctx.begin(event, key=key)
        return self.ctx.emit(
            DeadLetter,
            reason=reason,
            error_type=kind,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            original_type=event.type if event is not None else None,
            original=record.value,
            # an undecodable record has no event time of its own: use the record's, so the
            # dead letter's id is the same when the record is re-read after a restart
            **({} if event is not None else {"timestamp": utc_from_ms(record.timestamp_ms)}),
        )


class AsyncServiceRunner:
    """The same loop for asyncio programs: each step (poll, handling with retry backoff,
    publishing, checkpoint) runs in a worker thread, so the event loop stays free; one step is
    in flight at a time, so per-partition order and the checkpoint rule hold as in
    :class:`ServiceRunner`."""

    def __init__(self, runner: ServiceRunner) -> None:
        self.runner = runner

    async def run(self, *, until_idle: bool = False, stop: asyncio.Event | None = None) -> RunnerStats:
        r = self.runner
        while stop is None or not stop.is_set():
            if await asyncio.to_thread(r.step) == 0 and until_idle and await asyncio.to_thread(r.caught_up):
                break
        await asyncio.to_thread(r.checkpoint)
        return r.stats
