"""The event envelope every tradepipe event shares (R1.2).

Events are frozen msgspec structs. On the wire their field names are camelCase (``eventId``,
``correlationId`` ...) so a consumer written against the seed's JSON can read them; in Python
they are snake_case. The ``type`` field is the msgspec tag: the class name.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone
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
_MS_48 = 0xFFFF_FFFF_FFFF
_new_uuid = object.__new__
_set_slot = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown  # an enum member lookup costs more than the rest of _uuid_from_int
# a fresh 10-byte BLAKE2b state to copy: cheaper than setting up its parameters per id
_BLAKE2B_10 = hashlib.blake2b(digest_size=10)
_int_from_bytes = int.from_bytes
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_from_timestamp = datetime.fromtimestamp  # called positionally: a keyword ``tz=`` costs ~0.4 us


def _uuid_from_int(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` without its argument checking (2x cheaper on the hot path);
    ``value`` is already a valid 128-bit integer."""
    u = _new_uuid(uuid.UUID)
    _set_slot(u, "int", value)
    _set_slot(u, "is_safe", _SAFE_UNKNOWN)
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
    return event_id_from_seed(parent + index.to_bytes(4, "big"), id_time_ms(at))


def event_id_from_seed(seed: bytes, ms: int) -> uuid.UUID:
    """:func:`derived_event_id` from its parts: ``seed`` = parent bytes + the index as 4
    big-endian bytes, ``ms`` = :func:`id_time_ms` of the time (for callers that keep both)."""
    hasher = _BLAKE2B_10.copy()
    hasher.update(seed)
    digest = _int_from_bytes(hasher.digest(), "big")
    return _uuid_from_int(((((ms & _MS_48) << 80) | digest) & _V7_CLEAR) | _V7_SET)


# The datetime of the latest ``utc_from_ms`` call, with its epoch ms and its id time: ticks
# are turned into a datetime once (by the data bridge) and that same object comes back as
# the event's timestamp to every id and every bar that needs its milliseconds, so an identity
# check replaces the datetime arithmetic. One tuple, replaced whole, so threads never see a
# mixed entry.
_last_stamp: tuple[datetime | None, int, int] = (None, 0, 0)


def id_time_ms(at: datetime) -> int:
    """The time bits of a derived event id: ``int(at.timestamp() * 1000)``, as ids have always
    been made (float seconds, so about one instant in 170 lands 1 ms low: kept, ids must not
    change)."""
    stamp = _last_stamp
    if at is stamp[0]:
        return stamp[2]
    return int(at.timestamp() * 1000)


def ms_from_utc(at: datetime) -> int:
    """UTC epoch milliseconds of an aware ``at``, floored, in exact integer arithmetic."""
    stamp = _last_stamp
    if at is stamp[0]:
        return stamp[1]
    return (at - _EPOCH) // _MS


def utc_from_ms(ms: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds ``ms`` (the same object for the same
    whole ``ms`` twice in a row: ticks sharing a millisecond, bars opening at a tick's time)."""
    global _last_stamp
    if type(ms) is not int:  # a float ms: no memo (its id time and floor differ)
        return _from_timestamp(ms / 1000, UTC)
    stamp = _last_stamp
    if ms == stamp[1] and stamp[0] is not None:
        return stamp[0]
    # exact: rounded to the microsecond, whole ms come out whole (until the 23rd century)
    at = _from_timestamp(ms / 1000, UTC)
    # at.timestamp() is the double nearest ms / 1000, so this is id_time_ms(at)
    _last_stamp = (at, ms, int(ms / 1000 * 1000))
    return at
