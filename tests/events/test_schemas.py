"""The schema registry (R1.3): registered schemas match the code, the BACKWARD checker, check()
and register_current() on a scratch registry."""

from __future__ import annotations

import copy
import json
import re
from typing import Literal

import msgspec
import pytest

from tradepipe.events.envelope import Event
from tradepipe.events.schemas import (
    REGISTRY_DIR,
    SchemaRegistryError,
    SchemaRow,
    check,
    check_backward,
    export,
    list_schemas,
    load_schema,
    register_current,
    registered_versions,
    schema_of,
)
from tradepipe.events.types import EVENT_TYPES, OHLC, BarClosed, Payload
from tradepipe.events.upcasting import UpcasterRegistry

# --- the repository's registry ------------------------------------------------------------


def test_registered_schemas_match_the_code():
    assert check() == []


def test_every_type_has_a_registered_file_per_current_version():
    assert len(EVENT_TYPES) == 25  # 23 + ReplayRequested, AlertResolved
    for cls in EVENT_TYPES:
        name = cls.__name__
        assert (REGISTRY_DIR / name / f"{cls.schema_version}.json").is_file()
        assert load_schema(name, cls.schema_version) == schema_of(cls)


def test_list_schemas_rows():
    rows = list_schemas()
    assert len(rows) == len(EVENT_TYPES)
    assert rows[0] == SchemaRow("MarketDataReceived", "market-data-events", "1.0", ["1.0"])
    assert {r.type for r in rows} == {cls.__name__ for cls in EVENT_TYPES}


def test_schema_is_self_contained_and_names_type_and_version():
    doc = schema_of(BarClosed)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == "urn:tradepipe:event:BarClosed:1.0"
    assert doc["title"] == "BarClosed"
    assert doc["x-schema-version"] == "1.0"
    assert doc["type"] == "object"
    assert doc["properties"]["bid"] == {"$ref": "#/$defs/OHLC"}
    assert set(doc["$defs"]) == {"OHLC", "Metadata"}
    assert doc["required"] == [
        "type", "eventId", "timestamp", "timeframe", "barTime", "bid", "ask", "mid",
        "tickCount", "spreadMean", "spreadMax",
    ]
    # every $ref points into the document's own $defs
    refs = re.findall(r'"\$ref": "([^"]*)"', json.dumps(doc))
    assert sorted(refs) == ["#/$defs/Metadata"] + ["#/$defs/OHLC"] * 3


def test_docstrings_are_not_part_of_the_schema():
    class Documented(Event, frozen=True, kw_only=True, tag="Documented"):
        """Some words that may change any time."""

        topic = "test"
        description: str  # a field of that name stays

    doc = schema_of(Documented)
    assert "description" not in {k for k in doc if k != "properties"}
    assert doc["properties"]["description"] == {"type": "string"}


# --- BACKWARD checks on hand-made schemas ------------------------------------------------------


def obj(properties: dict, required=(), **extra) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), **extra}


OLD = obj(
    {
        "price": {"type": "number"},
        "count": {"type": "integer"},
        "side": {"enum": ["BUY", "SELL"]},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "tick": {"$ref": "#/$defs/Tick"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "features": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    required=["price", "count", "side", "tick"],
    **{"$defs": {"Tick": obj({"bid": {"type": "number"}, "ask": {"type": "number"}}, ["bid", "ask"])}},
)


def changed(fn) -> dict:
    new = copy.deepcopy(OLD)
    fn(new)
    return new


def test_identical_schema_is_compatible():
    assert check_backward(OLD, copy.deepcopy(OLD), "X") == []


def test_new_optional_field_is_compatible():
    new = changed(lambda s: s["properties"].update(vwap={"type": "number", "default": 0.0}))
    assert check_backward(OLD, new, "X") == []


def test_new_required_field_is_refused():
    def add(s):
        s["properties"]["vwap"] = {"type": "number"}
        s["required"].append("vwap")

    assert check_backward(OLD, changed(add), "BarClosed") == [
        "BarClosed: new required field 'vwap' at $.vwap has no default"
    ]


def test_optional_field_becoming_required_is_refused():
    new = changed(lambda s: s["required"].append("note"))
    assert check_backward(OLD, new, "X") == [
        "X: field 'note' at $.note became required (it had a default)"
    ]


def test_removed_fields_are_compatible():
    def remove(s):
        del s["properties"]["note"]  # optional
        del s["properties"]["count"]  # required in the old: the new reader ignores it
        s["required"].remove("count")

    assert check_backward(OLD, changed(remove), "X") == []


def test_removed_field_is_refused_when_new_forbids_unknown_fields():
    def remove(s):
        del s["properties"]["note"]
        s["additionalProperties"] = False

    problems = check_backward(OLD, changed(remove), "X")
    assert "X: type narrowed at $.note: string is no longer accepted (now nothing)" in problems
    assert "X: type narrowed at $.*: was any value, now nothing" in problems


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda s: s["properties"].update(price={"type": "integer"}),
            "X: type narrowed at $.price: number is no longer accepted (now integer)",
        ),
        (
            lambda s: s["properties"].update(side={"enum": ["BUY"]}),
            'X: value "SELL" at $.side is no longer accepted (now "BUY")',
        ),
        (
            lambda s: s["properties"].update(note={"type": "string", "default": ""}),
            "X: type narrowed at $.note: null is no longer accepted (now string)",
        ),
        (
            lambda s: s["$defs"]["Tick"]["properties"].update(ask={"type": "string"}),
            "X: type narrowed at $.tick.ask: number is no longer accepted (now string)",
        ),
        (
            lambda s: s["properties"]["tags"].update(items={"type": "integer"}),
            "X: type narrowed at $.tags[*]: string is no longer accepted (now integer)",
        ),
        (
            lambda s: s["properties"]["features"].update(additionalProperties={"type": "integer"}),
            "X: type narrowed at $.features.*: number is no longer accepted (now integer)",
        ),
        (
            lambda s: s["properties"]["count"].update(minimum=0),
            "X: constraint minimum at $.count tightened: None -> 0",
        ),
        (
            lambda s: s["properties"].update(note={"type": "string", "format": "uuid"}),
            "X: constraint format at $.note changed: None -> 'uuid'",
        ),
    ],
    ids=["number-to-integer", "enum-value-removed", "nullable-to-non-nullable", "nested-via-ref",
         "array-items", "map-values", "new-minimum", "new-format"],
)
def test_narrowing_is_refused(change, problem):
    assert problem in check_backward(OLD, changed(change), "X")


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["properties"].update(count={"type": "number"}),  # integer -> number
        lambda s: s["properties"].update(side={"enum": ["BUY", "SELL", "HOLD"]}),  # new enum value
        lambda s: s["properties"].update(price={"anyOf": [{"type": "number"}, {"type": "null"}]}),
        lambda s: s["properties"].update(side={"type": "string"}),  # enum -> any string
        lambda s: s["properties"].update(tags={}),  # anything
        lambda s: s["$defs"]["Tick"]["properties"].update(mid={"type": "number", "default": 0}),
    ],
    ids=["integer-to-number", "enum-value-added", "made-nullable", "enum-to-string", "to-any",
         "nested-optional-field"],
)
def test_widening_is_compatible(change):
    assert check_backward(OLD, changed(change), "X") == []


def test_nested_required_field_is_refused_with_path():
    def add(s):
        s["$defs"]["Tick"]["properties"]["mid"] = {"type": "number"}
        s["$defs"]["Tick"]["required"].append("mid")

    assert check_backward(OLD, changed(add), "X") == [
        "X: new required field 'mid' at $.tick.mid has no default"
    ]


def test_recursive_schema_terminates():
    tree = obj(
        {"value": {"type": "number"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
        ["value"],
    )
    old = {"$ref": "#/$defs/Node", "$defs": {"Node": tree}}
    new = copy.deepcopy(old)
    new["$defs"]["Node"]["properties"]["value"] = {"type": "integer"}
    assert check_backward(old, old, "T") == []
    assert check_backward(old, new, "T") == [
        "T: type narrowed at $.value: number is no longer accepted (now integer)"
    ]


# --- BACKWARD checks on real msgspec types -------------------------------------------------------


class BarClosedV2(BarClosed, frozen=True, kw_only=True, tag="BarClosed"):
    schema_version = "2.0"
    vwap: float


class BarClosedV2WithDefault(BarClosed, frozen=True, kw_only=True, tag="BarClosed"):
    schema_version = "2.0"
    vwap: float | None = None


def test_real_type_with_new_required_field_is_refused():
    assert check_backward(schema_of(BarClosed), schema_of(BarClosedV2), "BarClosed") == [
        "BarClosed: new required field 'vwap' at $.vwap has no default"
    ]


def test_real_type_with_new_defaulted_field_is_compatible():
    assert check_backward(schema_of(BarClosed), schema_of(BarClosedV2WithDefault), "BarClosed") == []


class OldSignal(Event, frozen=True, kw_only=True, tag="Signal"):
    topic = "test"
    direction: Literal["BUY", "SELL", "HOLD"]
    confidence: float
    bar: OHLC
    note: str | None = None


class IntOHLC(Payload, frozen=True, kw_only=True):
    open: float
    high: float
    low: float
    close: int


class NewSignal(Event, frozen=True, kw_only=True, tag="Signal"):
    topic = "test"
    schema_version = "2.0"
    direction: Literal["BUY", "SELL"]
    confidence: int
    bar: IntOHLC
    note: str = ""


def test_real_type_narrowings_are_refused_with_paths():
    assert check_backward(schema_of(OldSignal), schema_of(NewSignal), "Signal") == [
        'Signal: value "HOLD" at $.direction is no longer accepted (now "BUY" | "SELL")',
        "Signal: type narrowed at $.confidence: number is no longer accepted (now integer)",
        "Signal: type narrowed at $.bar.close: number is no longer accepted (now integer)",
        "Signal: type narrowed at $.note: null is no longer accepted (now string)",
    ]


def test_real_type_narrowing_the_other_way_round_is_widening():
    assert check_backward(
        schema_of(NewSignal), schema_of(OldSignal), "Signal"
    ) == []  # everything NewSignal wrote, OldSignal can read


# --- check() and register_current() on a scratch registry ------------------------------------


class Probe(Event, frozen=True, kw_only=True, tag="Probe"):
    topic = "test"
    x: int


class ProbeRetyped(Event, frozen=True, kw_only=True, tag="Probe"):
    topic = "test"
    x: float  # changed, same version


class ProbeV2(Event, frozen=True, kw_only=True, tag="Probe"):
    topic = "test"
    schema_version = "2.0"
    x: int
    y: str = ""


class ProbeV2Required(Event, frozen=True, kw_only=True, tag="Probe"):
    topic = "test"
    schema_version = "2.0"
    x: int
    y: str


class ProbeOlder(Event, frozen=True, kw_only=True, tag="Probe"):
    topic = "test"
    schema_version = "0.9"
    x: int


@pytest.fixture
def registry(tmp_path):
    """A scratch registry with Probe 1.0 registered."""
    directory = tmp_path / "registry"
    written = register_current([Probe], directory)
    assert written == [directory / "Probe" / "1.0.json"]
    return directory


def upcasters_with_probe_step() -> UpcasterRegistry:
    reg = UpcasterRegistry()

    @reg.register("Probe", "1.0", "2.0")
    def add_y(doc):
        return {**doc, "y": ""}

    return reg


def test_new_type_is_reported_until_registered(tmp_path):
    assert check([Probe], tmp_path, UpcasterRegistry()) == [
        "Probe 1.0 is compatible but not registered yet: run register_current()"
    ]
    register_current([Probe], tmp_path)
    assert check([Probe], tmp_path, UpcasterRegistry()) == []
    assert register_current([Probe], tmp_path) == []
    assert json.loads((tmp_path / "Probe" / "1.0.json").read_text()) == schema_of(Probe)


def test_change_without_version_bump_is_refused(registry):
    problems = check([ProbeRetyped], registry, UpcasterRegistry())
    assert problems == ["schema of Probe changed without a version bump (registered 1.0)"]
    with pytest.raises(SchemaRegistryError) as info:
        register_current([ProbeRetyped], registry)
    assert info.value.problems == problems
    assert registered_versions("Probe", registry) == ["1.0"]


def test_bump_without_upcaster_is_refused(registry):
    assert check([ProbeV2], registry, UpcasterRegistry()) == [
        'Probe: no upcaster from 1.0 to 2.0; register one with @UPCASTERS.register("Probe", "1.0", "2.0") '
        "so old events can be read"
    ]


def test_bump_with_upcaster_and_compatible_schema_registers(registry):
    upcasters = upcasters_with_probe_step()
    assert check([ProbeV2], registry, upcasters) == [
        "Probe 2.0 is compatible but not registered yet: run register_current()"
    ]
    assert register_current([ProbeV2], registry, upcasters) == [registry / "Probe" / "2.0.json"]
    assert registered_versions("Probe", registry) == ["1.0", "2.0"]
    assert check([ProbeV2], registry, upcasters) == []
    assert load_schema("Probe", "1.0", registry) == schema_of(Probe)  # old versions stay


def test_incompatible_bump_is_refused_even_with_upcaster(registry):
    upcasters = upcasters_with_probe_step()
    problems = check([ProbeV2Required], registry, upcasters)
    assert problems == ["Probe: new required field 'y' at $.y has no default"]
    with pytest.raises(SchemaRegistryError):
        register_current([ProbeV2Required], registry, upcasters)
    assert registered_versions("Probe", registry) == ["1.0"]


def test_version_going_backwards_is_refused(registry):
    assert check([ProbeOlder], registry, UpcasterRegistry()) == [
        "Probe: schema_version 0.9 is older than the registered 1.0"
    ]


def test_type_gone_from_the_code_is_reported(registry):
    assert check([], registry, UpcasterRegistry()) == [
        "Probe is registered (1.0) but no longer in the code"
    ]
    assert list_schemas([], registry) == [SchemaRow("Probe", "", "", ["1.0"])]


def test_versions_sort_numerically(tmp_path):
    for version in ("1.10", "1.9", "2.0", "1.0"):
        (tmp_path / "Probe").mkdir(exist_ok=True)
        (tmp_path / "Probe" / f"{version}.json").write_text("{}")
    assert registered_versions("Probe", tmp_path) == ["1.0", "1.9", "1.10", "2.0"]


def test_export_writes_registered_and_current(registry, tmp_path):
    register_current([ProbeV2], registry, upcasters_with_probe_step())
    out = tmp_path / "out"
    written = export(out, [ProbeV2, BarClosed], registry)
    assert written == sorted([out / "BarClosed" / "1.0.json", out / "Probe" / "1.0.json", out / "Probe" / "2.0.json"])
    assert json.loads((out / "Probe" / "1.0.json").read_text()) == schema_of(Probe)
    assert json.loads((out / "BarClosed" / "1.0.json").read_text()) == schema_of(BarClosed)


def test_export_keeps_registered_version_as_registered(registry, tmp_path):
    written = export(tmp_path / "out", [ProbeRetyped], registry)
    assert written == [tmp_path / "out" / "Probe" / "1.0.json"]
    assert json.loads(written[0].read_text()) == schema_of(Probe) != schema_of(ProbeRetyped)


def test_export_of_the_repository_registry(tmp_path):
    written = export(tmp_path)
    assert len(written) == 34  # 25 types at 1.0, nine of them also at 1.1
    assert sorted(f"{p.parent.name}/{p.name}" for p in written if p.name != "1.0.json") == [
        "AlertRaised/1.1.json", "OrderExecuted/1.1.json", "OrderPlaced/1.1.json", "PositionClosed/1.1.json",
        "PredictionGenerated/1.1.json", "SignalRejected/1.1.json", "SignalValidated/1.1.json",
        "TradingCommand/1.1.json", "TradingSignalGenerated/1.1.json"]


def test_generated_schema_is_stable():
    # msgspec output for the same type is deterministic, so the registry files do not churn
    assert all(schema_of(cls) == schema_of(cls) for cls in EVENT_TYPES)
    assert msgspec.json.encode(schema_of(BarClosed)) == msgspec.json.encode(schema_of(BarClosed))


def test_datetime_fields_are_strings():
    assert schema_of(BarClosed)["properties"]["barTime"] == {"type": "string"}
