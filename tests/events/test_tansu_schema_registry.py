"""Schemas on the wire (R1.3): `tradepipe schemas export --tansu` files loaded by a real Tansu
(`--schema-registry file://./schema`), which then accepts every event of every topic as our
JSON codec writes it, in every registered version, and refuses anything else with
INVALID_RECORD. Produced through raw confluent-kafka, so only the broker's behaviour is tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from infra import Tansu
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from tradepipe.cli import app
from tradepipe.events import JsonCodec, MsgpackCodec, new_event_id
from tradepipe.events.schemas import REGISTRY_DIR, registered_versions, type_name
from tradepipe.events.types import ALL_TOPICS, EVENT_TYPES, ORDERS, OrderPlaced
from tradepipe.runtime.store import event_headers

from .test_codec import SAMPLES

CODEC = JsonCodec()
ORDER_PLACED = next(e for e in SAMPLES if isinstance(e, OrderPlaced))


@pytest.fixture(scope="module")
def schema_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tansu-registry") / "schema"
    result = CliRunner().invoke(app, ["schemas", "export", "--tansu", str(directory)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return directory


@pytest.fixture(scope="module")
def broker(schema_dir) -> Tansu:
    """A Tansu of its own, validating against the exported files: the registry is read from
    ``./schema`` under its working directory (Tansu resolves file:// URLs against it)."""
    tansu = Tansu(cwd=schema_dir.parent, schema_registry="file://./schema").start()
    admin = AdminClient({"bootstrap.servers": tansu.bootstrap})
    # one partition each: "what was stored" is then everything before a marker record
    for future in admin.create_topics([NewTopic(topic, 1) for topic in ALL_TOPICS]).values():
        future.result(15)
    del admin  # its open connection would hold up the broker's shutdown
    yield tansu
    tansu.stop()


def produce(broker: Tansu, records: list[tuple[str, bytes | None]], linger_ms: int = 0) -> list[KafkaError | None]:
    """Send ``(topic, value)`` records keyed by a symbol, as the pipeline does; the delivery
    error of each (None: stored). With linger 0 and a flush per record, each is its own batch."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": linger_ms, "retries": 0})
    errors: list[KafkaError | None] = [None] * len(records)

    def report(index: int):
        return lambda err, _msg: errors.__setitem__(index, err)

    for index, (topic, value) in enumerate(records):
        producer.produce(topic, value=value, key=b"EURUSD", partition=0, on_delivery=report(index))
        if not linger_ms:
            producer.flush(15)
    assert producer.flush(15) == 0, "records still in flight"
    return errors


def stored_values(broker: Tansu, topic: str) -> list[bytes]:
    """Every value on the topic's partition, read up to a marker event appended now."""
    marker = CODEC.encode(msgspec.structs.replace(next(e for e in SAMPLES if e.topic == topic),
                                                  event_id=new_event_id()))
    assert produce(broker, [(topic, marker)]) == [None]
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "reader", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    try:
        while not values or values[-1] != marker:
            message = consumer.poll(10)
            assert message is not None, f"the marker never came back from {topic}"
            assert message.error() is None, message.error()
            values.append(message.value())
    finally:
        consumer.close()
    return values[:-1]


def test_one_file_per_topic_with_a_value_schema_only(schema_dir):
    files = sorted(p.name for p in schema_dir.iterdir())
    assert files == sorted(f"{topic}.json" for topic in ALL_TOPICS)
    for path in schema_dir.iterdir():
        Draft202012Validator.check_schema(json.loads(path.read_text())["properties"]["value"])
    orders = json.loads((schema_dir / f"{ORDERS}.json").read_text())
    assert orders.keys() == {"type", "properties"} and orders["properties"].keys() == {"value"}
    value = orders["properties"]["value"]
    on_orders = [type_name(cls) for cls in EVENT_TYPES if cls.topic == ORDERS]
    assert value["properties"]["type"] == {"enum": on_orders}
    versions = {b["if"]["properties"]["type"]["const"]: [v["allOf"][1]["x-schema-version"] for v in b["then"]["anyOf"]]
                for b in value["allOf"]}
    assert versions == {name: registered_versions(name, REGISTRY_DIR) for name in on_orders}
    assert versions["OrderPlaced"] == ["1.0", "1.1"]


def test_every_event_of_every_topic_is_accepted(broker):
    assert {e.topic for e in SAMPLES} == set(ALL_TOPICS)
    values = [CODEC.encode(e) for e in SAMPLES]
    assert produce(broker, [(e.topic, v) for e, v in zip(SAMPLES, values)]) == [None] * len(SAMPLES)
    # again as the pipeline sends them: keyed, with its headers, batched per topic
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    errors = []
    for event, value in zip(SAMPLES, values):
        producer.produce(event.topic, value, event.key, headers=list(event_headers(event, CODEC)),
                         on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(15) == 0
    assert errors == [None] * len(SAMPLES)
    for topic in ALL_TOPICS:
        stored = stored_values(broker, topic)
        assert all(stored.count(v) == 2 for e, v in zip(SAMPLES, values) if e.topic == topic), topic


def test_an_old_version_is_accepted(broker):
    """An OrderPlaced written by 1.0 code: no positionId/reason, metadata.version 1.0."""
    doc = json.loads(CODEC.encode(ORDER_PLACED))
    old = {k: v for k, v in doc.items() if k not in ("positionId", "reason")}
    old["metadata"] = {"version": "1.0", "producer": "old-engine"}
    value = json.dumps(old).encode()
    assert produce(broker, [(ORDERS, value)]) == [None]
    assert value in stored_values(broker, ORDERS)
    assert CODEC.decode(value).metadata.version == "1.1"  # upcast on read


def order_placed_with(**changes) -> bytes:
    doc = {**json.loads(CODEC.encode(ORDER_PLACED)), **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


NON_CONFORMING = {
    "wrong type of a field": order_placed_with(volume="0.1"),
    "missing required field": order_placed_with(orderId=...),
    "value outside an enum": order_placed_with(side="HOLD"),
    "nested field of the wrong type": order_placed_with(metadata={"version": 1.1}),
    "field added in 1.1 wrong in a 1.1 event": order_placed_with(reason="bogus"),
    "version nobody registered": order_placed_with(metadata={"version": "9.0"}),
    "type of another topic": CODEC.encode(SAMPLES[0]),  # a MarketDataReceived on order-events
    "unknown type": order_placed_with(type="OrderTeleported"),
    "no type": order_placed_with(type=...),
    "foreign JSON document": b'{"hello": "world"}',
    "JSON that is not an object": b"[1, 2, 3]",
    "garbage bytes": b"\x00\xff garbage \x13",
    "msgpack codec (not JSON)": MsgpackCodec().encode(ORDER_PLACED),
    "null value (tombstone)": None,
}


@pytest.mark.parametrize("value", NON_CONFORMING.values(), ids=NON_CONFORMING.keys())
def test_non_conforming_records_are_rejected_with_invalid_record(broker, value):
    [error] = produce(broker, [(ORDERS, value)])
    assert error is not None and error.code() == KafkaError.INVALID_RECORD
    assert error.str() == "Broker: Broker failed to validate record" and not error.retriable()
    assert value not in stored_values(broker, ORDERS)


def test_one_bad_record_fails_its_whole_batch(broker):
    good = CODEC.encode(ORDER_PLACED)
    bad = order_placed_with(volume="0.1")
    before = stored_values(broker, ORDERS).count(good)
    errors = produce(broker, [(ORDERS, good), (ORDERS, bad), (ORDERS, good)], linger_ms=200)
    assert [e.code() if e else None for e in errors] == [KafkaError.INVALID_RECORD] * 3
    assert stored_values(broker, ORDERS).count(good) == before
