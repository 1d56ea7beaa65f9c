"""What a service meets on a real broker's topic (R1.3, issue 6 "bad input"): garbage bytes, a
JSON document of someone else's schema, an event written by older code. On Kafka (Tansu): the
bad records go to dead-letter with the reason, the old event is upcast and handled, and the
service goes on handling what comes next."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import msgspec
import pytest

from tradepipe.bus import open_bus
from tradepipe.events import DEAD_LETTER, DeadLetter, JsonCodec
from tradepipe.events.types import OrderPlaced
from tradepipe.runtime import Context, Service
from tradepipe.runtime.runner import RunnerConfig, ServiceRunner
from tradepipe.runtime.store import MemoryCheckpointStore, event_headers

T0 = datetime(2024, 1, 20, 10, 30, tzinfo=timezone.utc)
CODEC = JsonCodec()
WAIT_S = 30  # for the group join and the broker round trips; a failure, not a timing, if exceeded


class OrderBook(Service):
    """Keeps every order it is handed."""

    name = "order-book"

    def __init__(self, topic: str) -> None:
        self.inputs = (topic,)
        self.orders: list[OrderPlaced] = []

    def handle(self, event, ctx):
        self.orders.append(event)
        return ()


def order(order_id: str, i: int) -> OrderPlaced:
    """An OrderPlaced as today's trading engine emits it (schema 1.1)."""
    ctx = Context("trading-engine")
    ctx.begin(None, key=order_id.encode())
    ctx.clock.advance(T0)
    return ctx.emit(OrderPlaced, symbol="EURUSD", order_id=order_id, side="BUY", volume=0.1 * i,
                    position_id=order_id, reason="signal")


def as_written_by_1_0(event: OrderPlaced) -> bytes:
    """The same order as 1.0 code wrote it: no positionId/reason, metadata.version 1.0."""
    doc = json.loads(CODEC.encode(event))
    del doc["positionId"], doc["reason"]
    doc["metadata"]["version"] = "1.0"
    return json.dumps(doc).encode()


@pytest.fixture
def bus(kafka_url):
    bus = open_bus(kafka_url)
    yield bus
    bus.close()


def run_until(runner: ServiceRunner, done) -> None:
    """Step the runner until ``done()``; fail if it never gets there."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"runner stats after {WAIT_S} s: {runner.stats}"
        runner.step()


def dead_letters_from(bus, topic: str, count: int) -> list[DeadLetter]:
    """The first ``count`` dead letters whose record came from ``topic`` (the dead-letter
    topic is shared with every other test on this broker)."""
    letters: list[DeadLetter] = []
    with bus.consumer(f"reader-{uuid.uuid4().hex[:8]}", [DEAD_LETTER]) as consumer:
        deadline = time.monotonic() + WAIT_S
        while len(letters) < count:
            assert time.monotonic() < deadline, f"only {len(letters)} dead letters from {topic}"
            for record in consumer.poll(100, 0.5):
                letter = CODEC.decode(record.value)
                if letter.source_topic == topic:
                    letters.append(letter)
    return letters


def test_bad_records_are_dead_lettered_old_events_upcast_and_the_service_goes_on(bus):
    topic = f"wire-orders-{uuid.uuid4().hex[:8]}"
    bus.create_topic(topic, 1)
    bus.create_topic(DEAD_LETTER)
    old, good, later = order("o-old", 1), order("o-good", 2), order("o-later", 3)
    garbage = b"\x00\xff not an event"
    foreign = b'{"order_id": "A-1", "qty": 3, "side": "buy"}'
    misshapen = b'{"type": "OrderPlaced", "orderId": "A-2", "volume": "lots"}'
    with bus.producer() as producer:
        producer.send(topic, garbage, b"EURUSD")
        producer.send(topic, foreign, b"EURUSD")
        producer.send(topic, misshapen, b"EURUSD")
        producer.send(topic, as_written_by_1_0(old), b"EURUSD",
                      headers=[("type", b"OrderPlaced"), ("schemaVersion", b"1.0"), ("codec", b"json")])
        producer.send(topic, CODEC.encode(good), good.key, headers=event_headers(good, CODEC))
        producer.flush()

        service = OrderBook(topic)
        runner = ServiceRunner(service, bus, group=f"order-book-{topic}", checkpoints=MemoryCheckpointStore(),
                               config=RunnerConfig(retry_initial_s=0.0001, retry_max_s=0.001))
        try:
            run_until(runner, lambda: len(service.orders) == 2)
            upcast, handled = service.orders
            assert upcast.order_id == "o-old" and upcast.metadata.version == "1.1"
            assert upcast == msgspec.structs.replace(old, position_id="", reason="signal")  # 1.1's defaults
            assert handled == good
            assert (runner.stats.handled, runner.stats.dead_lettered) == (2, 3)

            # still running: the next order is handled by the same runner
            producer.send(topic, CODEC.encode(later), later.key, headers=event_headers(later, CODEC))
            producer.flush()
            run_until(runner, lambda: len(service.orders) == 3)
            assert service.orders[2] == later
        finally:
            runner.close()

    letters = sorted(dead_letters_from(bus, topic, 3), key=lambda letter: letter.source_offset)
    assert [letter.original for letter in letters] == [garbage, foreign, misshapen]
    assert [letter.source_offset for letter in letters] == [0, 1, 2]
    assert [letter.reason for letter in letters] == [
        "malformed json: JSON is malformed: invalid character (byte 0)",
        "unknown event type None",
        "invalid OrderPlaced after upcasting from v1.0: Expected `float`, got `str` - at `$.volume`",
    ]
    assert all(letter.error_type == "decode-error" and letter.original_type is None for letter in letters)
