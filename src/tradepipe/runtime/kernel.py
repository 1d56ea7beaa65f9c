"""The in-process kernel: several services in one process, events handed directly from one
handler to the next (backtests, training sets, the embedded ``tradepipe run``).

It runs the very services the bus runners run, with the same :class:`Context` (event clock,
causal ids, deterministic eventIds), so a backtest and a live deployment differ only in
transport. Dispatch is breadth-first from each root event: an event goes to every service
subscribed to its topic, in the order the services were given, and their outputs follow in
the order emitted, so a run is deterministic. Every event is also published to the bus (when
one is given): the run's durable, replayable record.

A handler that raises does not stop the run: its input is dead-lettered with the reason. There
is no retry here: with event time and no I/O, a second attempt would fail the same way.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence

from tradepipe.bus.base import Bus
from tradepipe.events.codec import Codec, JsonCodec
from tradepipe.events.envelope import Event
from tradepipe.events.types import DeadLetter
from tradepipe.runtime.service import Context, Service
from tradepipe.runtime.store import publish


_encode_json = JsonCodec().encode


def handler_failure(ctx: Context, event: Event, exc: Exception) -> DeadLetter:
    """The DeadLetter for ``event`` whose handler raised ``exc`` (``ctx`` has begun ``event``),
    carrying the event itself as JSON."""
    return ctx.emit(
        DeadLetter,
        reason=f"{type(exc).__name__}: {exc}",
        error_type="handler-error",
        original_type=event.type,
        original=_encode_json(event),
    )


class InProcessPipeline:
    def __init__(
        self,
        services: Sequence[Service],
        bus: Bus | None = None,
        *,
        codec: Codec | None = None,
        flush_every: int = 5000,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.services = list(services)
        self._contexts = [Context(s.name) for s in self.services]
        self._routes: dict[str, list[tuple[Service, Context]]] = {}
        for service, ctx in zip(self.services, self._contexts):
            for topic in service.inputs:
                self._routes.setdefault(topic, []).append((service, ctx))
        self._bus = bus
        self._producer = bus.producer() if bus is not None else None
        self._codec = codec or JsonCodec()
        self._flush_every = flush_every
        self._unflushed = 0
        self._on_event = on_event
        #: events seen per type, inputs and outputs alike
        self.counts: Counter[str] = Counter()

    def feed(self, root: Event) -> None:
        """Dispatch ``root`` and everything it causes, breadth-first."""
        queue = deque((root,))
        routes = self._routes
        while queue:
            event = queue.popleft()
            self._record(event)
            for service, ctx in routes.get(event.topic, ()):
                ctx.begin(event)
                try:
                    queue.extend(service.handle(event, ctx))
                except Exception as exc:  # one poison event must not end a backtest
                    ctx.begin(event, key=b"handler-failure|" + service.name.encode() + event.event_id.bytes)
                    queue.append(handler_failure(ctx, event, exc))

    def feed_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.feed(event)

    def _record(self, event: Event) -> None:
        self.counts[event.type] += 1
        if self._on_event is not None:
            self._on_event(event)
        if self._producer is not None:
            publish(self._producer, self._codec, (event,))
            self._unflushed += 1
            if self._unflushed >= self._flush_every:
                self.flush()

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush()
        self._unflushed = 0

    def close(self) -> None:
        self.flush()
        if self._producer is not None:
            self._producer.close()
