"""The schema registry (R1.3): a versioned JSON Schema per event type, generated from the type.

Registered versions are files in the package, ``events/registry/<Type>/<version>.json``. A
type's schema is what ``msgspec.json.schema`` says about its class, made into one
self-contained document. Before a new version is accepted it must be BACKWARD compatible with
the latest registered one (Confluent's meaning: a consumer using the new schema can read data
written with the old one) and an upcaster must lead from the old version to the new one.

Nothing here runs at import time; the ``tradepipe schemas`` CLI calls :func:`list_schemas`,
:func:`export`, :func:`export_tansu` (per-topic files for the Tansu broker's validation),
:func:`check` and :func:`register_current`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from tradepipe.events.envelope import Event, Metadata
from tradepipe.events.types import EVENT_TYPES
from tradepipe.events.upcasting import UPCASTERS, UpcasterRegistry

REGISTRY_DIR = Path(__file__).parent / "registry"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Schema = dict[str, Any]


class SchemaRegistryError(ValueError):
    """Raised by :func:`register_current` when the check found problems."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- generating ----------------------------------------------------------------------------

def type_name(cls: type[Event]) -> str:
    """The name on the wire (the msgspec tag), which is also the registry folder's name."""
    tag = cls.__struct_config__.tag
    return tag if isinstance(tag, str) else cls.__name__


def schema_of(cls: type[Event]) -> Schema:
    """The self-contained JSON Schema of an event type at its current ``schema_version``.

    msgspec gives ``{"$ref": "#/$defs/<Type>", "$defs": {...}}``; the type's own definition
    becomes the root (references to it become ``#``), the nested structs stay under ``$defs``.
    """
    generated = _strip_descriptions(msgspec.json.schema(cls))
    root_ref = generated["$ref"]
    defs = dict(generated.get("$defs", {}))
    root = defs.pop(root_ref.rsplit("/", 1)[-1])
    name, version = type_name(cls), cls.schema_version
    doc = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:tradepipe:event:{name}:{version}",
        **root,
        "title": name,
        "x-schema-version": version,
    }
    if defs:
        doc["$defs"] = defs
    return _replace_refs(doc, root_ref, "#")


def _strip_descriptions(node: Any) -> Any:
    """Drop docstring-derived ``description``s: editing a docstring is not a schema change."""
    if isinstance(node, list):
        return [_strip_descriptions(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key in ("properties", "$defs"):  # maps of name -> schema (the names are not keywords)
            value = {k: _strip_descriptions(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "oneOf", "allOf", "prefixItems"):
            value = _strip_descriptions(value)
        out[key] = value
    return out


def _replace_refs(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {k: (new if k == "$ref" and v == old else _replace_refs(v, old, new)) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, old, new) for v in node]
    return node


# --- the registry on disk ------------------------------------------------------------------

def _version_key(version: str) -> tuple:
    """Order "1.10" after "1.9"; anything not dotted numbers sorts by text after those."""
    try:
        return (0, tuple(int(p) for p in version.split(".")))
    except ValueError:
        return (1, version)


def registered_types(registry_dir: Path = REGISTRY_DIR) -> list[str]:
    if not registry_dir.is_dir():
        return []
    return sorted(p.name for p in registry_dir.iterdir() if p.is_dir() and any(p.glob("*.json")))


def registered_versions(name: str, registry_dir: Path = REGISTRY_DIR) -> list[str]:
    """The registered versions of a type, oldest first."""
    folder = registry_dir / name
    if not folder.is_dir():
        return []
    return sorted((p.stem for p in folder.glob("*.json")), key=_version_key)


def load_schema(name: str, version: str, registry_dir: Path = REGISTRY_DIR) -> Schema:
    return json.loads((registry_dir / name / f"{version}.json").read_text(encoding="utf-8"))


def _write(path: Path, schema: Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class SchemaRow(NamedTuple):
    type: str
    topic: str
    current_version: str
    registered_versions: list[str]


def list_schemas(
    types: Iterable[type[Event]] = EVENT_TYPES, registry_dir: Path = REGISTRY_DIR
) -> list[SchemaRow]:
    """One row per event type in the code; types only in the registry have topic "" and
    current version "" (``check`` reports them)."""
    rows = [
        SchemaRow(type_name(cls), cls.topic, cls.schema_version, registered_versions(type_name(cls), registry_dir))
        for cls in types
    ]
    in_code = {row.type for row in rows}
    rows += [
        SchemaRow(name, "", "", registered_versions(name, registry_dir))
        for name in registered_types(registry_dir)
        if name not in in_code
    ]
    return rows


def export(
    directory: str | Path, types: Iterable[type[Event]] = EVENT_TYPES, registry_dir: Path = REGISTRY_DIR
) -> list[Path]:
    """Write ``<directory>/<Type>/<version>.json`` for every registered version and for each
    type's current (generated) schema when that version is not registered yet (a registered
    version is exported as registered). Returns the files written."""
    directory = Path(directory)
    written = []
    for name in registered_types(registry_dir):
        for version in registered_versions(name, registry_dir):
            written.append(_write(directory / name / f"{version}.json", load_schema(name, version, registry_dir)))
    for cls in types:
        if cls.schema_version not in registered_versions(type_name(cls), registry_dir):
            written.append(_write(directory / type_name(cls) / f"{cls.schema_version}.json", schema_of(cls)))
    return sorted(written)


# --- Tansu's broker-side validation ---------------------------------------------------------

def schemas_on_the_wire(cls: type[Event], registry_dir: Path = REGISTRY_DIR) -> list[Schema]:
    """Every schema an event of ``cls`` may have been written with: the registered versions,
    oldest first, then the current one while it is not registered yet."""
    name = type_name(cls)
    versions = registered_versions(name, registry_dir)
    schemas = [load_schema(name, version, registry_dir) for version in versions]
    if cls.schema_version not in versions:
        schemas.append(schema_of(cls))
    return schemas


def tansu_topic_schema(topic: str, types: Iterable[type[Event]], registry_dir: Path = REGISTRY_DIR) -> Schema:
    """The file Tansu validates ``topic``'s records against.

    Value only: a ``key`` schema would make Tansu parse keys as JSON, and ours are raw
    symbol bytes. The value must name one of the topic's types in ``type`` and fit the
    registered schema of the version its ``metadata.version`` claims, as the codec reads it
    (so a 1.1 field that is wrong cannot pass as an unknown extra of 1.0, and a version no
    consumer can upcast is refused). Each version keeps its own ``$id``, so its
    ``#/$defs/...`` references resolve inside it.
    """
    types = [cls for cls in types if cls.topic == topic]
    if not types:
        raise ValueError(f"no event type is published on topic {topic!r}")
    value = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:tradepipe:topic:{topic}",
        "title": topic,
        "type": "object",
        "properties": {"type": {"enum": [type_name(cls) for cls in types]}},
        "required": ["type"],
        "allOf": [
            {"if": {"properties": {"type": {"const": type_name(cls)}}},
             "then": {"anyOf": [{"allOf": [_claims_version(schema["x-schema-version"]), schema]}
                                for schema in schemas_on_the_wire(cls, registry_dir)]}}
            for cls in types
        ],
    }
    return {"type": "object", "properties": {"value": value}}


def _claims_version(version: str) -> Schema:
    """Event documents whose ``metadata.version`` is ``version``; without one (or without
    metadata) an event is read as the envelope's default version."""
    claim = {"properties": {"version": {"const": version}}}
    if version == Metadata().version:
        return {"properties": {"metadata": claim}}
    return {"required": ["metadata"], "properties": {"metadata": {"required": ["version"], **claim}}}


def export_tansu(
    directory: str | Path, types: Iterable[type[Event]] = EVENT_TYPES, registry_dir: Path = REGISTRY_DIR
) -> list[Path]:
    """Write ``<directory>/<topic>.json`` for every topic, the layout of Tansu's
    ``--schema-registry file://<directory>``, so the broker refuses (INVALID_RECORD) a record
    that is not an event of that topic in a registered version. Only JSON-codec payloads can
    pass: msgpack bytes are not JSON. Returns the files written."""
    directory = Path(directory)
    types = list(types)
    topics = sorted({cls.topic for cls in types})
    return [_write(directory / f"{topic}.json", tansu_topic_schema(topic, types, registry_dir)) for topic in topics]


# --- checking the code against the registry ------------------------------------------------

class _Status(NamedTuple):
    name: str
    problems: list[str]
    to_register: Schema | None  # a new version (or new type) that may be registered


def _status(cls: type[Event], registry_dir: Path, upcasters: UpcasterRegistry) -> _Status:
    name, version = type_name(cls), cls.schema_version
    current = schema_of(cls)
    versions = registered_versions(name, registry_dir)
    if not versions:
        return _Status(name, [], current)
    latest = versions[-1]
    if version in versions:
        if load_schema(name, version, registry_dir) == current:
            return _Status(name, [], None)
        return _Status(name, [f"schema of {name} changed without a version bump (registered {version})"], None)
    if _version_key(version) < _version_key(latest):
        return _Status(name, [f"{name}: schema_version {version} is older than the registered {latest}"], None)
    problems = check_backward(load_schema(name, latest, registry_dir), current, name)
    if not upcasters.has_path(name, latest, version):
        problems.append(
            f"{name}: no upcaster from {latest} to {version}; register one with "
            f'@UPCASTERS.register("{name}", "{latest}", "{version}") so old events can be read'
        )
    return _Status(name, problems, current if not problems else None)


def _statuses(types: Iterable[type[Event]], registry_dir: Path, upcasters: UpcasterRegistry) -> list[_Status]:
    types = list(types)
    statuses = [_status(cls, registry_dir, upcasters) for cls in types]
    in_code = {type_name(cls) for cls in types}
    statuses += [
        _Status(name, [f"{name} is registered ({', '.join(registered_versions(name, registry_dir))}) "
                       f"but no longer in the code"], None)
        for name in registered_types(registry_dir)
        if name not in in_code
    ]
    return statuses


def check(
    types: Iterable[type[Event]] = EVENT_TYPES,
    registry_dir: Path = REGISTRY_DIR,
    upcasters: UpcasterRegistry = UPCASTERS,
) -> list[str]:
    """Compare every type's generated schema with the registry; [] means all is registered.

    A new version that passes the BACKWARD check and has its upcaster is reported as waiting
    for :func:`register_current`, so CI notices a forgotten registration.
    """
    problems = []
    for status in _statuses(types, registry_dir, upcasters):
        problems += status.problems
        if status.to_register is not None:
            version = status.to_register["x-schema-version"]
            problems.append(f"{status.name} {version} is compatible but not registered yet: run register_current()")
    return problems


def register_current(
    types: Iterable[type[Event]] = EVENT_TYPES,
    registry_dir: Path = REGISTRY_DIR,
    upcasters: UpcasterRegistry = UPCASTERS,
) -> list[Path]:
    """Write the registry files of new types and new versions; refuse all if any check fails.

    Returns the files written ([] when everything was registered already).
    """
    statuses = _statuses(types, registry_dir, upcasters)
    problems = [p for s in statuses for p in s.problems]
    if problems:
        raise SchemaRegistryError(problems)
    return [
        _write(registry_dir / s.name / f"{s.to_register['x-schema-version']}.json", s.to_register)
        for s in statuses
        if s.to_register is not None
    ]


# --- BACKWARD compatibility ----------------------------------------------------------------

_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_EXACT = ("pattern", "format", "contentEncoding", "contentMediaType", "multipleOf", "uniqueItems")
_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")


def check_backward(old: Schema, new: Schema, name: str = "") -> list[str]:
    """Problems that stop a reader using ``new`` from reading data written with ``old``.

    Removing a field, adding an optional one (one with a default) and widening a type are
    fine; adding a required field, making an optional field required, narrowing a type
    (number→integer, dropping an enum value or Literal option, dropping null) or tightening a
    constraint are not. Nested objects, arrays, maps and ``$ref``s are followed; each problem
    names the JSON path, e.g. ``BarClosed: new required field 'vwap' at $.vwap has no default``.
    """
    checker = _Backward(old, new, f"{name}: " if name else "")
    checker.compare(old, new, "$")
    return checker.problems


class _Branch(NamedTuple):
    kind: str  # one of _TYPES, "enum" or "any"
    schema: Schema  # the (ref-resolved) schema this branch came from; for "enum": {"enum": [...]}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _ref(node: Any) -> str | None:
    return node.get("$ref") if isinstance(node, dict) else None


def _describe(branches: list[_Branch]) -> str:
    parts = []
    for b in branches:
        if b.kind == "enum":
            parts.append(" | ".join(json.dumps(v) for v in b.schema["enum"]))
        elif b.kind == "object" and "title" in b.schema:
            parts.append(b.schema["title"])
        else:
            parts.append(b.kind)
    return " | ".join(parts) or "nothing"


class _Backward:
    def __init__(self, old_doc: Schema, new_doc: Schema, prefix: str) -> None:
        self.docs = {"old": old_doc, "new": new_doc}
        self.prefix = prefix
        self.problems: list[str] = []
        self._active: set[tuple[str | None, str | None]] = set()

    def report(self, message: str) -> None:
        self.problems.append(self.prefix + message)

    def resolve(self, node: Any, side: str) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#"):
                raise ValueError(f"only local $refs are supported, got {ref!r}")
            target: Any = self.docs[side]
            for part in filter(None, ref[1:].split("/")):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def branches(self, node: Any, side: str) -> list[_Branch]:
        node = self.resolve(node, side)
        if node is True or node == {}:
            return [_Branch("any", {})]
        if node is False:
            return []
        for key in ("anyOf", "oneOf"):
            if key in node:
                return [b for sub in node[key] for b in self.branches(sub, side)]
        if "const" in node:
            return [_Branch("enum", {"enum": [node["const"]]})]
        if "enum" in node:
            return [_Branch("enum", {"enum": list(node["enum"])})]
        kinds = node.get("type")
        if kinds is None:
            return [_Branch("any", node)]
        kinds = [kinds] if isinstance(kinds, str) else kinds
        return [_Branch(k, node) for k in kinds]

    def compare(self, old: Any, new: Any, path: str) -> None:
        refs = (_ref(old), _ref(new))
        if refs != (None, None):
            if refs in self._active:  # a recursive structure: this pair is being compared above
                return
            self._active.add(refs)
        try:
            new_branches = self.branches(new, "new")
            if any(b.kind == "any" for b in new_branches):
                return
            for old_branch in self.branches(old, "old"):
                self.compare_branch(old_branch, new_branches, path)
        finally:
            self._active.discard(refs)

    def compare_branch(self, old: _Branch, new_branches: list[_Branch], path: str) -> None:
        if old.kind == "enum":
            for value in old.schema["enum"]:
                if not self.accepts_value(value, new_branches):
                    self.report(f"value {json.dumps(value)} at {path} is no longer accepted "
                                f"(now {_describe(new_branches)})")
            return
        if old.kind == "any":
            self.report(f"type narrowed at {path}: was any value, now {_describe(new_branches)}")
            return
        candidates = [b for b in new_branches if b.kind == old.kind or (old.kind, b.kind) == ("integer", "number")]
        if not candidates:
            self.report(f"type narrowed at {path}: {old.kind} is no longer accepted (now {_describe(new_branches)})")
            return
        # several candidates (e.g. a union of structs): one that fits is enough; else explain
        # against the one with the same title, or the closest
        results = []
        for candidate in candidates:
            sub = _Backward(self.docs["old"], self.docs["new"], self.prefix)
            sub._active = set(self._active)
            sub.compare_kind(old, candidate, path)
            if not sub.problems:
                return
            same_title = candidate.schema.get("title") == old.schema.get("title")
            results.append((not same_title, len(sub.problems), sub.problems))
        self.problems += min(results, key=lambda r: r[:2])[2]

    def accepts_value(self, value: Any, branches: list[_Branch]) -> bool:
        kind = _json_kind(value)
        for b in branches:
            if b.kind == "enum" and any(v == value and _json_kind(v) == kind for v in b.schema["enum"]):
                return True
            if b.kind == kind or b.kind == "any" or (kind, b.kind) == ("integer", "number"):
                return True
        return False

    def compare_kind(self, old: _Branch, new: _Branch, path: str) -> None:
        o, n = old.schema, new.schema
        for key in _LOWER_BOUNDS:
            if key in n and not (key in o and n[key] <= o[key]):
                self.report(f"constraint {key} at {path} tightened: {o.get(key)} -> {n[key]}")
        for key in _UPPER_BOUNDS:
            if key in n and not (key in o and n[key] >= o[key]):
                self.report(f"constraint {key} at {path} tightened: {o.get(key)} -> {n[key]}")
        for key in _EXACT:
            if key in n and o.get(key) != n[key]:
                self.report(f"constraint {key} at {path} changed: {o.get(key)!r} -> {n[key]!r}")
        if old.kind == "object":
            self.compare_object(o, n, path)
        elif old.kind == "array":
            self.compare_array(o, n, path)

    def compare_object(self, o: Schema, n: Schema, path: str) -> None:
        old_props, new_props = o.get("properties", {}), n.get("properties", {})
        old_required, new_required = set(o.get("required", [])), set(n.get("required", []))
        for prop, new_sub in new_props.items():
            sub_path = f"{path}.{prop}"
            if prop in old_props:
                if prop in new_required and prop not in old_required:
                    self.report(f"field '{prop}' at {sub_path} became required (it had a default)")
                self.compare(old_props[prop], new_sub, sub_path)
            elif prop in new_required:
                self.report(f"new required field '{prop}' at {sub_path} has no default")
            elif "additionalProperties" in o:  # old maps could hold this key with other values
                self.compare(o["additionalProperties"], new_sub, sub_path)
        for prop in sorted(new_required - set(new_props) - old_required):
            self.report(f"new required field '{prop}' at {path}.{prop} has no default")
        new_extra = n.get("additionalProperties", True)
        if new_extra is not True:
            for prop in old_props.keys() - new_props.keys():
                self.compare(old_props[prop], new_extra, f"{path}.{prop}")
            self.compare(o.get("additionalProperties", True), new_extra, f"{path}.*")

    def compare_array(self, o: Schema, n: Schema, path: str) -> None:
        old_prefix, new_prefix = o.get("prefixItems", []), n.get("prefixItems", [])
        for i in range(max(len(old_prefix), len(new_prefix))):
            old_item = old_prefix[i] if i < len(old_prefix) else o.get("items", True)
            new_item = new_prefix[i] if i < len(new_prefix) else n.get("items", True)
            self.compare(old_item, new_item, f"{path}[{i}]")
        self.compare(o.get("items", True), n.get("items", True), f"{path}[*]")
