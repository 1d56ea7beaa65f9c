"""The event envelope every tradepipe event shares (R1.2).

Events are frozen msgspec structs. On the wire their field names are camelCase (``eventId``,
``correlationId`` ...) so a consumer written against the seed's JSON can read them; in Python
they are snake_case. The ``type`` field is the msgspec tag: the class name.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone
from typing import ClassVar

import msgspec
from uuid_utils.compat import uuid7

UTC = timezone.utc


class Metadata(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """Who produced an event and with which schema version of its type."""

    version: str = "1.0"
    producer: str = ""


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename="camel",
    tag_field="type",
    tag=True,
    gc=False,  # events never form reference cycles; skipping GC tracking makes them cheaper
):
    """Base of every event: the seed's envelope.

    ``topic`` is the bus topic the type is published on; ``schema_version`` is the version of
    the type's schema that this code writes (the schema registry checks it, codecs upcast
    older versions to it on read).
    """

    topic: ClassVar[str]
    schema_version: ClassVar[str] = "1.0"

    event_id: uuid.UUID
    timestamp: datetime
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    symbol: str | None = None
    metadata: Metadata = Metadata()

    @property
    def type(self) -> str:
        return type(self).__name__

    @property
    def key(self) -> bytes:
        """Partition key: the symbol, else the event type (R2.5: by symbol and event type)."""
        return (self.symbol or type(self).__name__).encode()

    @property
    def timestamp_ms(self) -> int:
        return int(self.timestamp.timestamp() * 1000)


def new_event_id() -> uuid.UUID:
    """A fresh time-ordered UUIDv7 from the wall clock (for live root events)."""
    return uuid7()


# UUIDv7 layout: 48-bit ms | version 7 (4 bits) | 12 bits | variant 0b10 (2 bits) | 62 bits
_V7_CLEAR = ~((0xF << 76) | (0b11 << 62)) & ((1 << 128) - 1)
_V7_SET = (0x7 << 76) | (0b10 << 62)
_new_uuid = object.__new__
_set_slot = object.__setattr__


def _uuid_from_int(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` without its argument checking (2x cheaper on the hot path);
    ``value`` is already a valid 128-bit integer."""
    u = _new_uuid(uuid.UUID)
    _set_slot(u, "int", value)
    _set_slot(u, "is_safe", uuid.SafeUUID.unknown)
    return u


def derived_event_id(parent: uuid.UUID | bytes | str, index: int, at: datetime) -> uuid.UUID:
    """A deterministic UUIDv7: time bits from ``at``, random bits from (parent, index).

    A handler that re-processes the same input after a crash emits events with the same ids
    as the first time, so downstream deduplication by eventId removes the repeats: this is
    what turns at-least-once delivery into effectively-once effects.
    """
    if isinstance(parent, uuid.UUID):
        parent = parent.bytes
    elif isinstance(parent, str):
        parent = parent.encode()
    digest = hashlib.blake2b(parent + index.to_bytes(4, "big"), digest_size=10).digest()
    ms = int(at.timestamp() * 1000) & 0xFFFF_FFFF_FFFF
    raw = int.from_bytes(ms.to_bytes(6, "big") + digest, "big")
    return _uuid_from_int((raw & _V7_CLEAR) | _V7_SET)


def utc_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
