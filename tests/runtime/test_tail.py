"""BusTail: follows topics from their end (or ``history`` records back, or the start) and hands
each decoded event to every subscriber, whatever one of them does."""

from __future__ import annotations

from datetime import UTC, datetime

from infra import wait_until

from tradepipe.bus import open_bus
from tradepipe.events import SYSTEM
from tradepipe.events.envelope import new_event_id
from tradepipe.events.types import TradingCommand
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.store import EventStore
from tradepipe.runtime.tail import BusTail


def commands(n: int, reason: str) -> list[TradingCommand]:
    return [TradingCommand(event_id=new_event_id(), timestamp=datetime.now(UTC), command="halt",
                           reason=f"{reason} {i}") for i in range(n)]


def seen_by(tail: BusTail, count: int) -> None:
    wait_until(lambda: tail.seen >= count, 20, f"the tail to see {count} events")


def test_a_tail_starts_at_the_end_history_records_back_or_at_the_start(tmp_path):
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}", create=True)
    ensure_topics(bus, partitions=1)
    store = EventStore(bus)
    store.append(commands(5, "before"))
    tails = {"end": BusTail(bus), "history": BusTail(bus, history=2), "start": BusTail(bus, from_start=True)}
    reasons: dict[str, list[str]] = {name: [] for name in tails}
    for name, tail in tails.items():
        tail.subscribe(lambda event, record, name=name: reasons[name].append(event.reason))
        tail.start()
    store.append(commands(2, "after"))
    for tail, count in zip(tails.values(), (2, 4, 7)):
        seen_by(tail, count)
        tail.stop()
    assert reasons == {"end": ["after 0", "after 1"],
                       "history": ["before 3", "before 4", "after 0", "after 1"],
                       "start": [f"before {i}" for i in range(5)] + ["after 0", "after 1"]}
    bus.close()


def test_a_failing_subscriber_and_an_undecodable_record_stop_nothing(tmp_path):
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}", create=True)
    ensure_topics(bus, partitions=1)
    kept: list[str] = []
    with BusTail(bus) as tail:
        tail.subscribe(lambda event, record: 1 / 0)
        unsubscribe = tail.subscribe(lambda event, record: kept.append(event.reason))
        with bus.producer() as producer:
            producer.send(SYSTEM, b"not an event", b"k")
            producer.flush()
        EventStore(bus).append(commands(2, "ok"))
        seen_by(tail, 2)
        unsubscribe()
        EventStore(bus).append(commands(1, "late"))
        seen_by(tail, 3)
    assert kept == ["ok 0", "ok 1"] and tail.seen == 3
    bus.close()
