"""Codecs: events to bytes and back (R1.4). JSON is the default (human readable, the seed's
camelCase form); msgpack is the compact binary alternative. Both are msgspec, typed end to end.

Decoding never raises anything but :class:`DecodeError`, whose ``reason`` is what goes to the
dead-letter topic: malformed bytes, an unknown type, a payload that does not fit its schema,
or a schema version with no upcaster.
"""

from __future__ import annotations

from typing import Union

import msgspec

from tradepipe.events.envelope import Event
from tradepipe.events.types import EVENT_TYPES, EVENT_TYPES_BY_NAME
from tradepipe.events.upcasting import UPCASTERS, UpcastError, UpcasterRegistry

AnyEvent = Union[EVENT_TYPES]  # type: ignore[valid-type]


class DecodeError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Codec:
    """Shared logic; subclasses pick the msgspec format module."""

    name: str
    _format = msgspec.json

    def __init__(self, upcasters: UpcasterRegistry = UPCASTERS) -> None:
        self._upcasters = upcasters
        self._encoder = self._format.Encoder()
        self._decoder = self._format.Decoder(AnyEvent)
        self._raw_decoder = self._format.Decoder()

    def encode(self, event: Event) -> bytes:
        return self._encoder.encode(event)

    def decode(self, data: bytes) -> Event:
        try:
            event = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._decode_slow(data, str(exc))
        if event.metadata.version != event.schema_version:
            return self._decode_slow(data, None)
        return event

    def _decode_slow(self, data: bytes, typed_error: str | None) -> Event:
        """Old schema versions and errors: look at the raw document to upcast or explain."""
        try:
            doc = self._raw_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"malformed {self.name}: {exc}") from None
        if not isinstance(doc, dict):
            raise DecodeError(f"not an event: top level is {type(doc).__name__}, expected an object")
        type_name = doc.get("type")
        cls = EVENT_TYPES_BY_NAME.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            raise DecodeError(f"unknown event type {type_name!r}")
        meta = doc.get("metadata", {})
        if not isinstance(meta, dict):  # e.g. "metadata": "x" -- the typed decode said why
            raise DecodeError(f"invalid {type_name}: {typed_error}")
        version = meta.get("version", "1.0")
        if version == cls.schema_version:
            raise DecodeError(f"invalid {type_name}: {typed_error}")
        try:
            doc = self._upcasters.upcast(doc, cls.schema_version)
            return msgspec.convert(doc, cls, strict=False)
        except UpcastError as exc:
            raise DecodeError(str(exc)) from None
        except msgspec.ValidationError as exc:
            raise DecodeError(f"invalid {type_name} after upcasting from v{version}: {exc}") from None
        except Exception as exc:  # an upcaster that trips over an odd old document
            raise DecodeError(
                f"upcasting {type_name} from v{version} failed: {type(exc).__name__}: {exc}"
            ) from None


class JsonCodec(Codec):
    name = "json"
    _format = msgspec.json


class MsgpackCodec(Codec):
    name = "msgpack"
    _format = msgspec.msgpack


CODECS: dict[str, type[Codec]] = {"json": JsonCodec, "msgpack": MsgpackCodec}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]()
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}") from None
