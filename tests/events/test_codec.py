"""Codecs (R1.4): round trips of every event type, JSON that validates against the registered
schemas, the seed's wire shape, upcasting on read, decode errors, derived event ids."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from jsonschema import Draft202012Validator

from tradepipe.events import (
    EVENT_TYPES,
    DecodeError,
    JsonCodec,
    MsgpackCodec,
    derived_event_id,
    get_codec,
    new_event_id,
    utc_from_ms,
)
from tradepipe.events.envelope import Metadata
from tradepipe.events.schemas import load_schema, schema_of
from tradepipe.events.types import (
    OHLC,
    AlertRaised,
    AlertResolved,
    APIRequestReceived,
    APIResponseReady,
    BarClosed,
    CircuitBreakerStateChanged,
    ConfigurationUpdated,
    Contribution,
    DatabaseUpdated,
    DeadLetter,
    FeaturesCalculated,
    FeaturesMetadata,
    MarketDataReceived,
    ModelInfo,
    OrderCancelled,
    OrderExecuted,
    OrderPlaced,
    OrderRejected,
    PerformanceCalculated,
    PositionClosed,
    Prediction,
    PredictionGenerated,
    ReplayRequested,
    RuleVerdict,
    SignalRejected,
    SagaCompleted,
    SignalValidated,
    TickData,
    TradingCommand,
    TradingSignalGenerated,
    TradingStateChanged,
)
from tradepipe.events.upcasting import UpcasterRegistry

UTC = timezone.utc
T0 = datetime(2024, 1, 20, 10, 30, tzinfo=UTC)
ROOT = uuid.UUID("018d2a6e-3c70-7000-8000-000000000001")


def envelope(i: int, producer: str = "test", version: str = "1.0", **extra) -> dict:
    return dict(
        event_id=derived_event_id(ROOT, i, T0 + timedelta(milliseconds=i)),
        timestamp=T0 + timedelta(milliseconds=i),
        correlation_id=ROOT,
        causation_id=ROOT if i % 2 else None,
        symbol="EURUSD",
        metadata=Metadata(version=version, producer=producer),
        **extra,
    )


SIGNAL_ID = uuid.UUID("018d2a6e-3c70-7000-8000-0000000000ff")
BAR = OHLC(open=1.085, high=1.0862, low=1.0841, close=1.0855)
VERDICTS = [RuleVerdict(rule="min_confidence", passed=True), RuleVerdict(rule="spread", passed=False, detail="2.1 > 2")]

SAMPLES = [
    MarketDataReceived(
        **envelope(0, "data-bridge-8001"), source="MT5",
        data=TickData(bid=1.085, ask=1.0852, volume=1000.0, timestamp=T0),
    ),
    BarClosed(
        **envelope(1), timeframe="1m", bar_time=T0, bid=BAR, ask=BAR, mid=BAR,
        tick_count=42, spread_mean=0.00018, spread_max=0.0003,
    ),
    FeaturesCalculated(
        **{**envelope(2), "metadata": FeaturesMetadata(calculation_time="15ms", producer="feature-engineering-8011")},
        timeframe="1m", bar_time=T0, group="technical-analysis",
        features={"rsi": 65.5, "macd": 0.0012, "sma_20": 1.0845, "ema_50": None},
    ),
    PredictionGenerated(
        **envelope(3, "ml-xgboost-8013", PredictionGenerated.schema_version),
        prediction=Prediction(direction="BUY", confidence=0.85, target_price=1.086, stop_loss=1.084, time_horizon="1h"),
        model=ModelInfo(name="XGBoost-v1.2", accuracy=0.72, inference_time="45ms"),
    ),
    TradingSignalGenerated(
        **envelope(4, version=TradingSignalGenerated.schema_version), direction="SELL", confidence=0.7, timeframe="1m",
        contributors=[Contribution(model="lstm", direction="SELL", confidence=0.8, weight=0.5)],
        missing_models=["lightgbm"],
    ),
    SignalValidated(
        **envelope(5, version="1.1"), signal_id=SIGNAL_ID, direction="BUY", confidence=0.9, verdicts=VERDICTS[:1],
        timeframe="1m", bar_time=T0, price=1.0851, target_price=1.0871, stop_loss=1.0841,
    ),
    SignalRejected(**envelope(6, version="1.1"), signal_id=SIGNAL_ID, direction="HOLD", confidence=0.4, verdicts=VERDICTS),
    OrderPlaced(
        **envelope(7, version="1.1"), order_id="o-1", side="BUY", volume=0.1, order_type="LIMIT", price=1.085,
        stop_loss=1.084, take_profit=1.087, broker="mt5", position_id="o-1", reason="signal",
    ),
    OrderExecuted(
        **envelope(8, version="1.1"), order_id="o-1", side="BUY", volume=0.1, price=1.0851, commission=0.7,
        slippage=0.0001, position_id="o-1", broker="mt5",
    ),
    OrderRejected(**envelope(9), order_id="o-2", reason="insufficient margin"),
    OrderCancelled(**envelope(10), order_id="o-3", reason="expired"),
    PositionClosed(
        **envelope(11, version="1.1"), position_id="p-1", side="SELL", volume=0.1, entry_price=1.086, exit_price=1.085,
        pnl=10.0, reason="take-profit", order_id="o-4", opened_at=T0,
    ),
    SagaCompleted(
        **envelope(20), outcome="TIMED_OUT", steps=["signal", "validation", "order"], failed_step="fill",
        reason="no fill within 5s", compensations=["cancel o-1"], order_id="o-1",
    ),
    PerformanceCalculated(
        **envelope(12), equity=10_010.0, realized_pnl=10.0, unrealized_pnl=-2.5, trades=3,
        metrics={"sharpe": 1.2, "max_drawdown": None},
    ),
    ConfigurationUpdated(**envelope(13), changes={"risk.max_positions": 3, "symbols": ["EURUSD", "GBPUSD"]}),
    TradingCommand(**envelope(21, version="1.1"), command="order", order_id="o-1", reason="manual", side="BUY",
                   volume=10_000.0),
    ReplayRequested(**envelope(31), target="projections", reason="schema change"),
    TradingStateChanged(**envelope(22), state="HALTED", reason="drawdown 6% >= 5%", equity=94_000.0, drawdown=0.06),
    CircuitBreakerStateChanged(
        **envelope(14), breaker="ml-lstm", from_state="CLOSED", to_state="OPEN", failures=5, reason="timeouts",
    ),
    AlertRaised(**envelope(15, version="1.1"), rule="drawdown", severity="critical", message="drawdown 6%",
                value=0.06, threshold=0.05, subject="portfolio"),
    AlertResolved(**envelope(30), rule="drawdown", subject="portfolio", message="drawdown 1.5%", value=0.015),
    APIRequestReceived(**envelope(16), request_id="r-1", method="POST", path="/orders", body={"volume": 0.1}, sync=False),
    APIResponseReady(**envelope(17), request_id="r-1", status=201, body={"orderId": "o-1", "ok": True}),
    DatabaseUpdated(**envelope(18), store="postgres", table="orders", status="failure", record_id="o-1"),
    DeadLetter(
        **envelope(19), reason="unknown event type 'Nope'", error_type="DecodeError",
        source_topic="order-events", source_partition=3, source_offset=1234, original_type="Nope",
        original=b'{"type":"Nope"}\x00\xff',
    ),
]


def test_one_sample_per_event_type():
    assert [type(e) for e in SAMPLES] == list(EVENT_TYPES)


# --- round trips and schema validation -------------------------------------------------------


@pytest.mark.parametrize("codec", [JsonCodec(), MsgpackCodec()], ids=["json", "msgpack"])
@pytest.mark.parametrize("event", SAMPLES, ids=[type(e).__name__ for e in SAMPLES])
def test_round_trip(codec, event):
    decoded = codec.decode(codec.encode(event))
    assert type(decoded) is type(event)
    assert decoded == event
    assert decoded.event_id == event.event_id and decoded.timestamp == event.timestamp


@pytest.mark.parametrize("event", SAMPLES, ids=[type(e).__name__ for e in SAMPLES])
def test_json_validates_against_registered_schema(event):
    doc = json.loads(JsonCodec().encode(event))
    name = type(event).__name__
    for schema in (schema_of(type(event)), load_schema(name, type(event).schema_version)):
        Draft202012Validator.check_schema(schema)
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        assert list(validator.iter_errors(doc)) == []
    assert doc["type"] == name


def test_schema_rejects_documents_the_decoder_rejects():
    schema = schema_of(OrderExecuted)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    good = json.loads(JsonCodec().encode(SAMPLES[8]))
    bad_price = {**good, "price": "1.08"}
    bad_side = {**good, "side": "HOLD"}
    no_volume = {k: v for k, v in good.items() if k != "volume"}
    bad_id = {**good, "eventId": "not-a-uuid"}
    assert [e.message for e in validator.iter_errors(bad_price)] == ["'1.08' is not of type 'number'"]
    assert [e.message for e in validator.iter_errors(bad_side)] == ["'HOLD' is not one of ['BUY', 'SELL']"]
    assert [e.message for e in validator.iter_errors(no_volume)] == ["'volume' is a required property"]
    assert [e.message for e in validator.iter_errors(bad_id)] == ["'not-a-uuid' is not a 'uuid'"]


def test_json_wire_form_is_camel_case_with_type_tag():
    doc = json.loads(JsonCodec().encode(SAMPLES[7]))
    assert doc["type"] == "OrderPlaced"
    assert doc["eventId"] == str(SAMPLES[7].event_id)
    assert doc["timestamp"] == "2024-01-20T10:30:00.007000Z"
    assert doc["correlationId"] == str(ROOT)
    assert {"orderId", "orderType", "stopLoss", "takeProfit"} <= doc.keys()
    assert doc["metadata"] == {"version": "1.1", "producer": "test"}


def test_get_codec():
    assert isinstance(get_codec("json"), JsonCodec)
    assert isinstance(get_codec("msgpack"), MsgpackCodec)
    with pytest.raises(ValueError, match="unknown codec 'xml'; choose one of \\['json', 'msgpack'\\]"):
        get_codec("xml")


# --- the seed's wire shape -----------------------------------------------------------------------

SEED_MARKET_DATA = {
    "eventId": "uuid",
    "timestamp": "2024-01-20T10:30:00Z",
    "source": "MT5",
    "symbol": "EURUSD",
    "data": {"bid": 1.0850, "ask": 1.0852, "volume": 1000, "timestamp": "2024-01-20T10:30:00Z"},
    "metadata": {"version": "1.0", "producer": "data-bridge-8001"},
}
SEED_FEATURES = {
    "eventId": "uuid",
    "timestamp": "2024-01-20T10:30:01Z",
    "correlationId": "market-data-event-id",
    "symbol": "EURUSD",
    "timeframe": "1m",
    "features": {"rsi": 65.5, "macd": 0.0012, "sma_20": 1.0845, "ema_50": 1.0847, "bb_upper": 1.0860},
    "metadata": {"calculationTime": "15ms", "version": "1.0", "producer": "feature-engineering-8011"},
}
SEED_PREDICTION = {
    "eventId": "uuid",
    "timestamp": "2024-01-20T10:30:02Z",
    "correlationId": "features-event-id",
    "symbol": "EURUSD",
    "prediction": {"direction": "BUY", "confidence": 0.85, "targetPrice": 1.0860, "stopLoss": 1.0840, "timeHorizon": "1h"},
    "model": {"name": "XGBoost-v1.2", "accuracy": 0.72, "inferenceTime": "45ms"},
    "metadata": {"version": "1.0", "producer": "ml-xgboost-8013"},
}


def missing_keys(seed: dict, ours: dict, path: str = "$") -> list[str]:
    """Keys of ``seed`` absent from ``ours`` at the same nesting, recursively."""
    missing = []
    for key, value in seed.items():
        if key not in ours:
            missing.append(f"{path}.{key}")
        elif isinstance(value, dict) and key != "features":  # features: a map, keys are data
            if not isinstance(ours[key], dict):
                missing.append(f"{path}.{key} (not an object)")
            else:
                missing += missing_keys(value, ours[key], f"{path}.{key}")
    return missing


def seed_shaped(event) -> dict:
    return json.loads(JsonCodec().encode(event))


@pytest.mark.parametrize(
    ("seed", "event"),
    [(SEED_MARKET_DATA, SAMPLES[0]), (SEED_FEATURES, SAMPLES[2]), (SEED_PREDICTION, SAMPLES[3])],
    ids=["MarketDataReceived", "FeaturesCalculated", "PredictionGenerated"],
)
def test_seed_keys_are_a_subset_at_every_level(seed, event):
    ours = seed_shaped(event)
    assert missing_keys(seed, ours) == []
    for key, value in seed.items():  # same kind of value at each key (object vs scalar)
        assert isinstance(ours[key], dict) == isinstance(value, dict), key
    assert set(ours) - set(seed) <= {"type", "correlationId", "causationId", "timeframe", "barTime", "group", "fallback", "price"}


def test_seed_metadata_and_payload_keys_exactly():
    assert set(seed_shaped(SAMPLES[0])["data"]) == {"bid", "ask", "volume", "timestamp"}
    assert set(seed_shaped(SAMPLES[0])["metadata"]) == {"version", "producer"}
    assert set(seed_shaped(SAMPLES[2])["metadata"]) == {"calculationTime", "version", "producer"}
    assert set(seed_shaped(SAMPLES[3])["prediction"]) == {"direction", "confidence", "targetPrice", "stopLoss", "timeHorizon"}
    assert set(seed_shaped(SAMPLES[3])["model"]) == {"name", "accuracy", "inferenceTime"}
    assert seed_shaped(SAMPLES[2])["features"] == {"rsi": 65.5, "macd": 0.0012, "sma_20": 1.0845, "ema_50": None}


def test_missing_keys_helper_finds_nested_gaps():
    assert missing_keys(SEED_PREDICTION, {**SEED_PREDICTION, "model": {"name": "x"}}) == [
        "$.model.accuracy", "$.model.inferenceTime"
    ]


def test_seed_shaped_documents_with_a_type_decode():
    seed = {**SEED_MARKET_DATA, "type": "MarketDataReceived", "eventId": str(ROOT)}
    event = JsonCodec().decode(json.dumps(seed).encode())
    assert isinstance(event, MarketDataReceived)
    assert event.data == TickData(bid=1.085, ask=1.0852, volume=1000.0, timestamp=T0)
    assert event.metadata == Metadata(version="1.0", producer="data-bridge-8001")


# --- upcasting on read ---------------------------------------------------------------------------


def old_order_rejected(version: str, **fields) -> dict:
    """An OrderRejected as an older producer wrote it: the reason was called ``message``."""
    return {
        "type": "OrderRejected",
        "eventId": str(ROOT),
        "timestamp": "2024-01-20T10:30:00Z",
        "symbol": "EURUSD",
        "orderId": "o-9",
        "message": "market closed",
        "metadata": {"version": version, "producer": "old-engine"},
        **fields,
    }


def upcasters() -> UpcasterRegistry:
    reg = UpcasterRegistry()

    @reg.register("OrderRejected", "0.8", "0.9")
    def order_id_was_a_number(doc):
        return {**doc, "orderId": str(doc["orderId"])}

    @reg.register("OrderRejected", "0.9", "1.0")
    def message_became_reason(doc):
        doc = dict(doc)
        doc["reason"] = doc.pop("message")
        return doc

    return reg


EXPECTED = OrderRejected(
    event_id=ROOT, timestamp=T0, symbol="EURUSD", order_id="o-9", reason="market closed",
    metadata=Metadata(version="1.0", producer="old-engine"),
)


@pytest.mark.parametrize("codec_cls", [JsonCodec, MsgpackCodec])
def test_old_version_is_upcast_on_read(codec_cls):
    codec = codec_cls(upcasters=upcasters())
    old = msgspec.json.encode(old_order_rejected("0.9")) if codec_cls is JsonCodec else \
        msgspec.msgpack.encode(old_order_rejected("0.9"))
    event = codec.decode(old)
    assert event == EXPECTED
    assert codec.encode(event) == codec.encode(EXPECTED)  # written back at the current version


def test_upcasters_chain_over_several_versions():
    old = json.dumps(old_order_rejected("0.8", orderId=9)).encode()
    assert JsonCodec(upcasters=upcasters()).decode(old) == msgspec.structs.replace(EXPECTED, order_id="9")


def test_old_version_that_happens_to_fit_the_current_type_is_still_upcast():
    reg = UpcasterRegistry()

    @reg.register("OrderCancelled", "0.9", "1.0")
    def reasons_were_upper_case(doc):
        return {**doc, "reason": doc["reason"].lower()}

    old = {"type": "OrderCancelled", "eventId": str(ROOT), "timestamp": "2024-01-20T10:30:00Z",
           "orderId": "o-1", "reason": "EXPIRED", "metadata": {"version": "0.9"}}
    event = JsonCodec(upcasters=reg).decode(json.dumps(old).encode())
    assert event == OrderCancelled(event_id=ROOT, timestamp=T0, order_id="o-1", reason="expired")


def test_version_without_upcaster_is_a_decode_error():
    old = json.dumps(old_order_rejected("0.5")).encode()
    with pytest.raises(DecodeError) as info:
        JsonCodec(upcasters=upcasters()).decode(old)
    assert info.value.reason == (
        "OrderRejected schema version '0.5' cannot be read: no upcaster from it (current version is '1.0')"
    )


def test_default_codec_has_no_upcasters_for_old_versions():
    with pytest.raises(DecodeError, match="OrderRejected schema version '0.9' cannot be read"):
        JsonCodec().decode(json.dumps(old_order_rejected("0.9")).encode())


def test_upcast_result_that_does_not_fit_is_a_decode_error():
    reg = UpcasterRegistry()
    reg.register("OrderRejected", "0.9", "1.0")(lambda doc: doc)  # forgets to rename
    with pytest.raises(DecodeError) as info:
        JsonCodec(upcasters=reg).decode(json.dumps(old_order_rejected("0.9")).encode())
    assert info.value.reason == (
        "invalid OrderRejected after upcasting from v0.9: Object missing required field `reason`"
    )


def test_upcaster_that_raises_is_a_decode_error():
    old = old_order_rejected("0.9")
    del old["message"]
    with pytest.raises(DecodeError) as info:
        JsonCodec(upcasters=upcasters()).decode(json.dumps(old).encode())
    assert info.value.reason == "upcasting OrderRejected from v0.9 failed: KeyError: 'message'"


def test_upcaster_registered_twice_is_refused():
    reg = upcasters()
    with pytest.raises(ValueError, match="an upcaster for OrderRejected v0.9 is already registered"):
        reg.register("OrderRejected", "0.9", "1.0")(lambda doc: doc)


# --- decode errors --------------------------------------------------------------------------------

GOOD = json.loads(JsonCodec().encode(SAMPLES[8]))  # an OrderExecuted


def as_json(doc) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"type": ', "malformed json: Input data was truncated"),
        (b"\xff\xfe", "malformed json: "),
        (b"[1, 2]", "not an event: top level is list, expected an object"),
        (b'"OrderExecuted"', "not an event: top level is str, expected an object"),
        (as_json({**GOOD, "type": "Nope"}), "unknown event type 'Nope'"),
        (as_json({k: v for k, v in GOOD.items() if k != "type"}), "unknown event type None"),
        (as_json({k: v for k, v in GOOD.items() if k != "price"}),
         "invalid OrderExecuted: Object missing required field `price`"),
        (as_json({**GOOD, "price": "1.08"}), "invalid OrderExecuted: Expected `float`, got `str` - at `$.price`"),
        (as_json({**GOOD, "side": "HOLD"}), "invalid OrderExecuted: Invalid enum value 'HOLD' - at `$.side`"),
        (as_json({**GOOD, "eventId": "nope"}), "invalid OrderExecuted: Invalid UUID - at `$.eventId`"),
        (as_json({**GOOD, "metadata": "1.0"}),
         "invalid OrderExecuted: Expected `object`, got `str` - at `$.metadata`"),
        (as_json({**GOOD, "metadata": None}),
         "invalid OrderExecuted: Expected `object`, got `null` - at `$.metadata`"),
        (as_json({**GOOD, "metadata": {"version": 2}}),
         "OrderExecuted schema version 2 cannot be read: no upcaster from it (current version is '1.1')"),
    ],
    ids=["truncated", "not-utf8", "list", "string", "unknown-type", "no-type", "missing-field",
         "wrong-type", "bad-literal", "bad-uuid", "metadata-not-object", "metadata-null", "version-not-str"],
)
def test_json_decode_errors(data, reason):
    with pytest.raises(DecodeError) as info:
        JsonCodec().decode(data)
    assert info.value.reason.startswith(reason)
    assert str(info.value) == info.value.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1", "malformed msgpack: MessagePack data is malformed: invalid opcode '\\xc1' (byte 0)"),
        (msgspec.msgpack.encode([1]), "not an event: top level is list, expected an object"),
        (msgspec.msgpack.encode({**GOOD, "type": "Nope"}), "unknown event type 'Nope'"),
        (msgspec.msgpack.encode({**GOOD, "volume": "x"}),
         "invalid OrderExecuted: Expected `float`, got `str` - at `$.volume`"),
    ],
    ids=["malformed", "list", "unknown-type", "wrong-type"],
)
def test_msgpack_decode_errors(data, reason):
    with pytest.raises(DecodeError) as info:
        MsgpackCodec().decode(data)
    assert info.value.reason == reason


# --- event ids ---------------------------------------------------------------------------------------


def test_derived_event_id_is_deterministic():
    a = derived_event_id(ROOT, 0, T0)
    assert a == derived_event_id(ROOT, 0, T0)
    assert a == derived_event_id(ROOT.bytes, 0, T0)
    assert derived_event_id(str(ROOT), 0, T0) == derived_event_id(str(ROOT), 0, T0)


def test_derived_event_id_differs_by_index_and_parent():
    other = uuid.UUID("018d2a6e-3c70-7000-8000-000000000002")
    ids = {derived_event_id(p, i, T0) for p in (ROOT, other) for i in range(100)}
    assert len(ids) == 200


@pytest.mark.parametrize(
    "at",
    [T0, T0 + timedelta(microseconds=999), datetime(2030, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
     datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=1)],
)
def test_derived_event_id_is_uuid7_with_time_bits(at):
    eid = derived_event_id(ROOT, 7, at)
    assert eid.version == 7
    assert eid.variant == uuid.RFC_4122
    ms = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert eid.int >> 80 == ms
    assert utc_from_ms(eid.int >> 80) == at.replace(microsecond=at.microsecond // 1000 * 1000)


def test_derived_event_ids_sort_by_time():
    times = [T0 + timedelta(milliseconds=ms) for ms in (0, 1, 2, 1000, 60_000, 86_400_000)]
    ids = [derived_event_id(ROOT, 100 - i, t) for i, t in enumerate(times)]  # indexes descending
    assert sorted(ids) == ids
    assert sorted(str(i) for i in ids) == [str(i) for i in ids]


def test_new_event_id_is_uuid7():
    a, b = new_event_id(), new_event_id()
    assert a.version == 7 and a.variant == uuid.RFC_4122
    assert a != b
    assert isinstance(a, uuid.UUID)


def test_timestamp_ms_and_key():
    event = SAMPLES[9]
    assert event.timestamp_ms == 1705746600009
    assert event.key == b"EURUSD"
    assert msgspec.structs.replace(event, symbol=None).key == b"OrderRejected"
    assert event.type == "OrderRejected"
