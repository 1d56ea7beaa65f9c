"""What a service is (R3.1): a deterministic handler ``event -> events`` with a clock.

A service knows nothing of transport. The runner hands it one decoded event and a
:class:`Context`; it returns the events it emits, built with ``ctx.emit`` so that every
output carries the causal ids (R3.6) and a deterministic eventId. State that must survive a
restart is returned by :meth:`Service.snapshot` and given back to :meth:`Service.restore`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from tradepipe.events.envelope import Event, Metadata, event_id_from_seed, id_time_ms
from tradepipe.runtime.clock import Clock, EventClock

E = TypeVar("E", bound=Event)


class Context:
    """Per-runner helper a handler uses to read the time and build its output events.

    ``emit`` fills the envelope: timestamp = the clock's now, causationId = the input event,
    correlationId = the input's correlationId (or the input itself if it is a root), symbol =
    the input's, producer = the service's name, and an eventId derived from the input's id and
    the output's index, so re-handling the same input yields byte-identical outputs.

    ``begin`` runs for every input of every service, and most inputs (ticks) emit nothing, so
    it only records the input: the id seed (input key + producer) is built by the first
    ``emit``.
    """

    __slots__ = ("clock", "producer", "_producer_key", "_metadata", "_parent", "_parent_key", "_seed", "_count")

    def __init__(self, producer: str, clock: Clock | None = None) -> None:
        self.clock = clock or EventClock()
        self.producer = producer
        self._producer_key = producer.encode()
        self._metadata: dict[type, Metadata] = {}
        self._parent: Event | None = None
        self._parent_key: bytes | None = None
        self._seed: bytes | None = None  # parent key + producer, once an output needs it
        self._count = 0

    def now(self):
        return self.clock.now()

    def begin(self, parent: Event | None, key: bytes | None = None) -> None:
        """Start handling ``parent`` (or, for a source, a root identified by ``key``)."""
        self._parent = parent
        self._parent_key = key
        self._seed = None
        self._count = 0
        if parent is not None:
            self.clock.advance(parent.timestamp)

    def emit(self, cls: type[E], /, **fields: Any) -> E:
        parent = self._parent
        now = fields.pop("timestamp", None) or self.clock.now()
        if parent is not None:
            if "causation_id" not in fields:
                fields["causation_id"] = parent.event_id
            if "correlation_id" not in fields:
                fields["correlation_id"] = parent.correlation_id or parent.event_id
            if "symbol" not in fields:
                fields["symbol"] = parent.symbol
        if "metadata" not in fields:
            fields["metadata"] = self.metadata(cls)
        return cls(event_id=self.next_event_id(now), timestamp=now, **fields)

    # The two parts of ``emit`` that hot paths (the data bridge, once per tick) use to build
    # their event with a plain keyword call: ``cls(**fields)`` costs msgspec ~4x more.

    def metadata(self, cls: type[Event]) -> Metadata:
        """The default metadata of ``cls`` events from this producer (made once per class)."""
        meta = self._metadata.get(cls)
        if meta is None:
            meta = self._metadata[cls] = _metadata_for(cls, self.producer)
        return meta

    def next_event_id(self, now: datetime) -> uuid.UUID:
        """The eventId of the next output of the input being handled, at time ``now``."""
        seed = self._seed
        if seed is None:
            key = self._parent_key
            if key is None:
                parent = self._parent
                key = parent.event_id.bytes if parent is not None else b""
            seed = self._seed = key + self._producer_key
        count = self._count
        self._count = count + 1
        index = _INDEX_BYTES[count] if count < _CACHED_INDEXES else count.to_bytes(4, "big")
        return event_id_from_seed(seed + index, id_time_ms(now))


#: the 4-byte big-endian output indexes of derived ids, for the first outputs of an input
_CACHED_INDEXES = 64
_INDEX_BYTES = [i.to_bytes(4, "big") for i in range(_CACHED_INDEXES)]


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
    #: the event classes ``handle`` acts on when it ignores the rest of its topics' events
    #: (None = all of them). The in-process kernel hands a service only these, which spares a
    #: call per tick to services that want only bars; ``handle`` must still ignore the others,
    #: since a bus runner delivers every event of the topics.
    accepts: ClassVar[tuple[type[Event], ...] | None] = None

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
