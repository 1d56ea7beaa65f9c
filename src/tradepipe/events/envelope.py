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
    ms = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(digest, "big")  # 80 bits; 74 are used
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def utc_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
