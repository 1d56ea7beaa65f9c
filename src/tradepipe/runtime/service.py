"""What a service is (R3.1): a deterministic handler ``event -> events`` with a clock.

A service knows nothing of transport. The runner hands it one decoded event and a
:class:`Context`; it returns the events it emits, built with ``ctx.emit`` so that every
output carries the causal ids (R3.6) and a deterministic eventId. State that must survive a
restart is returned by :meth:`Service.snapshot` and given back to :meth:`Service.restore`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

from tradepipe.events.envelope import Event, Metadata, derived_event_id
from tradepipe.runtime.clock import Clock, EventClock

E = TypeVar("E", bound=Event)


class Context:
    """Per-runner helper a handler uses to read the time and build its output events.

    ``emit`` fills the envelope: timestamp = the clock's now, causationId = the input event,
    correlationId = the input's correlationId (or the input itself if it is a root), symbol =
    the input's, producer = the service's name, and an eventId derived from the input's id and
    the output's index, so re-handling the same input yields byte-identical outputs.
    """

    __slots__ = ("clock", "producer", "_metadata", "_parent", "_parent_key", "_count")

    def __init__(self, producer: str, clock: Clock | None = None) -> None:
        self.clock = clock or EventClock()
        self.producer = producer
        self._metadata: dict[type, Metadata] = {}
        self._parent: Event | None = None
        self._parent_key: bytes = b""
        self._count = 0

    def now(self):
        return self.clock.now()

    def begin(self, parent: Event | None, key: bytes | None = None) -> None:
        """Start handling ``parent`` (or, for a source, a root identified by ``key``)."""
        self._parent = parent
        self._parent_key = key if key is not None else (parent.event_id.bytes if parent else b"")
        self._count = 0
        if parent is not None:
            self.clock.advance(parent.timestamp)

    def emit(self, cls: type[E], /, **fields: Any) -> E:
        parent = self._parent
        now = fields.pop("timestamp", None) or self.clock.now()
        if parent is not None:
            fields.setdefault("causation_id", parent.event_id)
            fields.setdefault("correlation_id", parent.correlation_id or parent.event_id)
            fields.setdefault("symbol", parent.symbol)
        if "metadata" not in fields:
            meta = self._metadata.get(cls)
            if meta is None:
                meta = self._metadata[cls] = _metadata_for(cls, self.producer)
            fields["metadata"] = meta
        event_id = derived_event_id(self._parent_key + self.producer.encode(), self._count, now)
        self._count += 1
        return cls(event_id=event_id, timestamp=now, **fields)


def _metadata_for(cls: type[Event], producer: str) -> Metadata:
    """Default metadata of ``cls`` (its own Metadata subclass if it has one) for ``producer``."""
    default = next(d for f, d in zip(cls.__struct_fields__, _defaults(cls)) if f == "metadata")
    return type(default)(version=cls.schema_version, producer=producer)


def _defaults(cls: type) -> list[Any]:
    fields = cls.__struct_fields__
    defaults = cls.__struct_defaults__
    return [None] * (len(fields) - len(defaults)) + list(defaults)


class Service:
    """Base for pipeline services. Subclasses set ``name``, ``inputs`` and implement ``handle``."""

    name: ClassVar[str]
    port: ClassVar[int | None] = None  # default health/metrics port when run as its own process
    inputs: ClassVar[tuple[str, ...]] = ()  # topics it consumes

    def handle(self, event: Event, ctx: Context) -> Iterable[Event]:
        raise NotImplementedError

    def on_timer(self, ctx: Context) -> Iterable[Event]:
        """Called by live runners when no input arrived for a while (wall clock only, never
        in event-time backtests): e.g. close a bar after a period of inactivity."""
        return ()

    def snapshot(self) -> Any:
        """State to persist at a checkpoint (msgspec-serialisable); None if stateless."""
        return None

    def restore(self, state: Any) -> None:
        """Load what :meth:`snapshot` returned."""


__all__ = ["Context", "Service"]
