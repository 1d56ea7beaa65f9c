"""Follow topics of a bus live and hand every decoded event to subscribers.

The API gateway, the dashboard and the aggregated metrics watch the pipeline this way: no
consumer group (nothing is committed, every watcher sees everything), starting at the end of
each partition (or at the beginning with ``from_start``, or ``history`` records before the
end), one background thread polling.
A subscriber is a callable ``(event, record)``; one that raises is logged and kept, so a
broken watcher cannot stop the others. Records that do not decode are skipped (the services
dead-letter them; a watcher only observes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from tradepipe.bus.base import Bus, BusError, Record
from tradepipe.events.codec import Codec, DecodeError, JsonCodec
from tradepipe.events.envelope import Event
from tradepipe.events.types import ALL_TOPICS

log = logging.getLogger(__name__)

Subscriber = Callable[[Event, Record], None]


class BusTail:
    def __init__(self, bus: Bus, topics: Iterable[str] = ALL_TOPICS, *, codec: Codec | None = None,
                 from_start: bool = False, history: int = 0, poll_timeout_s: float = 0.05,
                 batch: int = 1000) -> None:
        self.bus = bus
        known = bus.topics()
        self.topics = tuple(t for t in topics if t in known)
        self.codec = codec or JsonCodec()
        self.from_start = from_start
        self.history = history
        self.poll_timeout_s = poll_timeout_s
        self.batch = batch
        self.seen = 0  # events handed to subscribers
        self._subscribers: tuple[Subscriber, ...] = ()  # replaced whole: delivery reads it without the lock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add ``subscriber``; returns the function that removes it."""
        with self._lock:
            self._subscribers += (subscriber,)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
        return unsubscribe

    def start(self) -> BusTail:
        """Start following; returns once the start positions are fixed, so an event published
        after ``start()`` returns is seen."""
        self._thread = threading.Thread(target=self._run, name="bus-tail", daemon=True)
        self._thread.start()
        self._started.wait(30)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        consumer = self.bus.consumer(None)
        try:
            partitions = self.bus.partitions_of(self.topics)
            consumer.assign(partitions)
            if not self.from_start:
                ends = {t: self.bus.end_offsets(t) for t in self.topics}
                for tp in partitions:
                    consumer.seek(tp, max(0, ends[tp.topic][tp.partition] - self.history))
            self._started.set()
            while not self._stop.is_set():
                try:
                    records = consumer.poll(self.batch, timeout_s=self.poll_timeout_s)
                except BusError as exc:  # a broker away: keep trying, a watcher must not die
                    log.warning("bus tail: %s", exc)
                    self._stop.wait(1.0)
                    continue
                for record in records:
                    self._deliver(record)
        finally:
            self._started.set()
            consumer.close()

    def _deliver(self, record: Record) -> None:
        try:
            event = self.codec.decode(record.value)
        except DecodeError:
            return
        self.seen += 1
        for subscriber in self._subscribers:
            try:
                subscriber(event, record)
            except Exception:
                log.exception("bus tail subscriber %r failed on %s", subscriber, event.type)

    def __enter__(self) -> BusTail:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
