"""The in-process kernel: several services in one process, events handed directly from one
handler to the next (backtests, training sets, the embedded ``tradepipe run``).

It runs the very services the bus runners run, with the same :class:`Context` (event clock,
causal ids, deterministic eventIds), so a backtest and a live deployment differ only in
transport. Dispatch is breadth-first from each root event: an event goes to every service
subscribed to its topic (and accepting its class, see ``Service.accepts``), in the order the
services were given, and their outputs follow in the order emitted, so a run is
deterministic. Every event is also published to the bus (when
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
        # (service, its bound handle, its context): the bound method is looked up once here
        # rather than once per event
        self._subscribers = [(s, s.handle, ctx) for s, ctx in zip(self.services, self._contexts)]
        #: who gets an event of each class, in service order (see ``_routes_of``)
        self._routes: dict[type, list[tuple[Service, Callable[[Event, Context], Iterable[Event]], Context]]] = {}
        self._bus = bus
        self._producer = bus.producer() if bus is not None else None
        self._codec = codec or JsonCodec()
        self._flush_every = flush_every
        self._unflushed = 0
        self._on_event = on_event
        self._seen: dict[type, int] = {}  # events per class; ``counts`` names them

    @property
    def counts(self) -> Counter[str]:
        """Events seen per type, inputs and outputs alike."""
        counts: Counter[str] = Counter()
        for cls, count in self._seen.items():
            counts[cls.__name__] += count
        return counts

    def feed(self, root: Event) -> None:
        """Dispatch ``root`` and everything it causes, breadth-first."""
        caused = self._dispatch(root)
        if not caused:  # most roots (ticks inside a bar) cause nothing: no queue needed
            return
        queue = deque(caused)
        dispatch = self._dispatch
        while queue:
            caused = dispatch(queue.popleft())
            if caused:
                queue.extend(caused)

    def _dispatch(self, event: Event) -> list[Event]:
        """Record ``event``, hand it to every service subscribed to its topic, in order, and
        return what they emitted, in order."""
        seen = self._seen  # recording inline: this runs for every event
        cls = type(event)
        seen[cls] = seen.get(cls, 0) + 1
        if self._on_event is not None:
            self._on_event(event)
        if self._producer is not None:
            self._publish(event)
        caused: list[Event] = []
        routes = self._routes.get(cls)
        if routes is None:
            routes = self._routes_of(cls)
        for service, handle, ctx in routes:
            ctx.begin(event)
            try:
                caused.extend(handle(event, ctx))
            except Exception as exc:  # one poison event must not end a backtest
                ctx.begin(event, key=b"handler-failure|" + service.name.encode() + event.event_id.bytes)
                caused.append(handler_failure(ctx, event, exc))
        return caused

    def _routes_of(self, cls: type[Event]) -> list:
        """The subscribers of ``cls`` events (their topic is an input, and the service accepts
        the class), worked out once per class: routing by class skips, for instance, every
        tick for services that take only bars."""
        routes = self._routes[cls] = [
            (service, handle, ctx) for service, handle, ctx in self._subscribers
            if cls.topic in service.inputs and (service.accepts is None or issubclass(cls, service.accepts))
        ]
        return routes

    def feed_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.feed(event)

    def _publish(self, event: Event) -> None:
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
