"""Upcasters: functions that turn a stored event of an old schema version into the current one.

An upcaster works on the decoded document (camelCase dict) of one type, from one version to
the next; the codec chains them on read until the document has the type's current version
(R1.3). Events are never rewritten in storage: old bytes stay as they were written.
"""

from __future__ import annotations

from collections.abc import Callable

Document = dict
UpcastFn = Callable[[Document], Document]


class UpcastError(ValueError):
    pass


class UpcasterRegistry:
    def __init__(self) -> None:
        self._steps: dict[tuple[str, str], tuple[str, UpcastFn]] = {}

    def register(self, type_name: str, from_version: str, to_version: str) -> Callable[[UpcastFn], UpcastFn]:
        """Decorator: ``@registry.register("BarClosed", "1.0", "2.0")``."""

        def wrap(fn: UpcastFn) -> UpcastFn:
            key = (type_name, from_version)
            if key in self._steps:
                raise UpcastError(f"an upcaster for {type_name} v{from_version} is already registered")
            self._steps[key] = (to_version, fn)
            return fn

        return wrap

    def has_path(self, type_name: str, start: str, end: str) -> bool:
        """Whether registered steps lead from version ``start`` to ``end`` of ``type_name``."""
        version, seen = start, set()
        while version != end:
            step = self._steps.get((type_name, version))
            if step is None or version in seen:
                return False
            seen.add(version)
            version = step[0]
        return True

    def upcast(self, doc: Document, current_version: str) -> Document:
        """Apply the chain of steps until ``doc`` is at ``current_version``."""
        type_name = doc.get("type")
        meta = doc.get("metadata") or {}
        version = meta.get("version", "1.0")
        seen = set()
        while version != current_version:
            step = self._steps.get((type_name, version))
            if step is None or version in seen:
                raise UpcastError(
                    f"{type_name} schema version {version!r} cannot be read: no upcaster from it "
                    f"(current version is {current_version!r})"
                )
            seen.add(version)
            version, fn = step[0], step[1]
            doc = fn(dict(doc))
            doc["metadata"] = {**(doc.get("metadata") or {}), "version": version}
        return doc


#: The registry the default codecs use; upcasters of tradepipe's own types register here.
UPCASTERS = UpcasterRegistry()
