"""Typed, immutable events (R1), their codecs and schemas."""

from tradepipe.events.codec import Codec, DecodeError, JsonCodec, MsgpackCodec, get_codec
from tradepipe.events.envelope import Event, Metadata, derived_event_id, new_event_id, utc_from_ms
from tradepipe.events.types import *  # noqa: F403  (the event classes and topic names)
from tradepipe.events.types import EVENT_TYPES, EVENT_TYPES_BY_NAME

__all__ = [
    "Codec", "DecodeError", "JsonCodec", "MsgpackCodec", "get_codec",
    "Event", "Metadata", "derived_event_id", "new_event_id", "utc_from_ms",
    "EVENT_TYPES", "EVENT_TYPES_BY_NAME",
    *[t.__name__ for t in EVENT_TYPES],
]
