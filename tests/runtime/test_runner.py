"""The service runner's promises (R3.1, R3.2) on every local backend."""

from __future__ import annotations

import asyncio

import pytest
from tick_stats import TickStats, make_ticks

from tradepipe.events import DEAD_LETTER, FEATURES, MARKET_DATA, FeaturesCalculated, JsonCodec
from tradepipe.runtime import Service
from tradepipe.runtime.runner import AsyncServiceRunner, RunnerConfig, ServiceRunner
from tradepipe.runtime.store import EventStore


FAST_RETRY = RunnerConfig(retry_initial_s=0.0001, retry_max_s=0.001, checkpoint_every=50)


def replay(bus, topic):
    return [s.event for s in EventStore(bus).replay(topic)]


def test_outputs_carry_the_causal_chain_and_deterministic_ids(runtime_bus):
    ticks = make_ticks(400)
    EventStore(runtime_bus).append(ticks)
    ServiceRunner(TickStats(), runtime_bus, config=FAST_RETRY).run(until_idle=True)
    outputs = replay(runtime_bus, FEATURES)
    assert len(outputs) == 4  # every 100th tick of each of 2 symbols
    by_id = {t.event_id: t for t in ticks}
    for out in outputs:
        cause = by_id[out.causation_id]
        assert out.correlation_id == cause.event_id  # a tick is the root of its chain
        assert out.symbol == cause.symbol and out.timestamp == cause.timestamp  # event time
        assert out.metadata.producer == "tick-stats"
    # handling the same inputs again (fresh state, new group) yields the very same ids
    again = TickStats()
    ServiceRunner(again, runtime_bus, group="other", config=FAST_RETRY).run(until_idle=True)
    assert {e.event_id for e in replay(runtime_bus, FEATURES)} == {o.event_id for o in outputs}


def test_malformed_records_go_to_dead_letter_and_the_service_goes_on(runtime_bus):
    ticks = make_ticks(10)
    store = EventStore(runtime_bus)
    store.append(ticks[:5])
    producer = runtime_bus.producer()
    producer.send(MARKET_DATA, b"\x00not json", b"EURUSD")
    producer.send(MARKET_DATA, b'{"type":"NoSuchEvent","eventId":"x"}', b"EURUSD")
    producer.send(MARKET_DATA, b'{"type":"MarketDataReceived","metadata":{"version":"9.0"}}', b"EURUSD")
    producer.flush()
    store.append(ticks[5:])
    service = TickStats()
    stats = ServiceRunner(service, runtime_bus, config=FAST_RETRY).run(until_idle=True)
    assert sum(service.count.values()) == 10 and stats.handled == 10
    letters = replay(runtime_bus, DEAD_LETTER)
    reasons = sorted(letter.reason for letter in letters)
    assert len(letters) == 3 and stats.dead_lettered == 3
    assert any(r.startswith("malformed json") for r in reasons)
    assert "unknown event type 'NoSuchEvent'" in reasons
    assert any("schema version '9.0'" in r for r in reasons)
    assert sorted(letter.original for letter in letters) == sorted([
        b"\x00not json",
        b'{"type":"NoSuchEvent","eventId":"x"}',
        b'{"type":"MarketDataReceived","metadata":{"version":"9.0"}}',
    ])
    assert all(letter.error_type == "decode-error" and letter.source_topic == MARKET_DATA for letter in letters)


def test_duplicate_event_ids_are_applied_once(runtime_bus):
    ticks = make_ticks(300)
    store = EventStore(runtime_bus)
    store.append(ticks)
    store.append(ticks[100:250])  # an upstream producer re-delivering after a crash
    service = TickStats()
    stats = ServiceRunner(service, runtime_bus, config=FAST_RETRY).run(until_idle=True)
    assert sum(service.count.values()) == 300
    assert stats.duplicates == 150


class Flaky(Service):
    """Fails the first ``failures`` attempts at each event whose bid ends in a given tick."""

    name = "flaky"
    inputs = (MARKET_DATA,)

    def __init__(self, failures: int, poison_index: int) -> None:
        self.failures, self.poison_index = failures, poison_index
        self.attempts: dict[int, int] = {}
        self.seen = 0

    def handle(self, event, ctx):
        index = int(round((event.data.bid - 1.3) / 1e-5))
        if index == self.poison_index:
            self.attempts[index] = self.attempts.get(index, 0) + 1
            if self.attempts[index] <= self.failures:
                raise ValueError(f"bad tick {index}")
        self.seen += 1
        return []


def test_transient_handler_errors_are_retried(runtime_bus):
    EventStore(runtime_bus).append(make_ticks(20))
    service = Flaky(failures=2, poison_index=7)
    stats = ServiceRunner(service, runtime_bus, config=FAST_RETRY).run(until_idle=True)
    assert service.seen == 20 and stats.retries == 2 and stats.dead_lettered == 0


def test_poison_events_are_dead_lettered_after_max_attempts(runtime_bus):
    ticks = make_ticks(20)
    EventStore(runtime_bus).append(ticks)
    service = Flaky(failures=99, poison_index=7)
    stats = ServiceRunner(service, runtime_bus, config=FAST_RETRY).run(until_idle=True)
    assert service.seen == 19 and service.attempts[7] == 3 and stats.dead_lettered == 1
    [letter] = replay(runtime_bus, DEAD_LETTER)
    assert letter.reason == "ValueError: bad tick 7" and letter.error_type == "handler-error"
    assert letter.causation_id == ticks[7].event_id and letter.original_type == "MarketDataReceived"
    assert JsonCodec().decode(letter.original) == ticks[7]  # the original bytes, intact


def test_restart_resumes_from_the_checkpoint(runtime_bus):
    ticks = make_ticks(1000)
    store = EventStore(runtime_bus)
    store.append(ticks[:600])
    first = ServiceRunner(TickStats(), runtime_bus, config=FAST_RETRY, instance_id="a")
    first.run(until_idle=True)
    first.close()
    store.append(ticks[600:])
    resumed = TickStats()
    second = ServiceRunner(resumed, runtime_bus, config=FAST_RETRY, instance_id="a")
    assert sum(resumed.count.values()) == 600  # restored from the snapshot
    stats = second.run(until_idle=True)
    assert stats.handled == 400 and sum(resumed.count.values()) == 1000
    checkpoint = second.checkpoints.load("tick-stats", "tick-stats", "a")
    assert checkpoint.handled == 1000
    assert {(t, p): o for t, p, o in checkpoint.positions} == {
        (MARKET_DATA, p): end for p, end in runtime_bus.end_offsets(MARKET_DATA).items() if end
    } | {(MARKET_DATA, p): 0 for p, end in runtime_bus.end_offsets(MARKET_DATA).items() if not end}


def test_async_runner_matches_the_sync_runner(runtime_bus):
    EventStore(runtime_bus).append(make_ticks(500))
    sync_service, async_service = TickStats(), TickStats()
    ServiceRunner(sync_service, runtime_bus, group="sync", config=FAST_RETRY).run(until_idle=True)
    runner = ServiceRunner(async_service, runtime_bus, group="async", config=FAST_RETRY)
    stats = asyncio.run(AsyncServiceRunner(runner).run(until_idle=True))
    assert stats.handled == 500
    assert async_service.snapshot() == sync_service.snapshot()


def test_event_store_replays_from_offset_and_time(runtime_bus):
    ticks = make_ticks(200)
    store = EventStore(runtime_bus)
    store.append(ticks)
    everything = [s.event for s in store.replay(MARKET_DATA)]
    assert sorted(e.event_id for e in everything) == sorted(t.event_id for t in ticks)
    assert [e.timestamp for e in everything] == sorted(e.timestamp for e in everything)
    cut = ticks[150].timestamp
    later = [s.event for s in store.replay(MARKET_DATA, from_time=cut)]
    assert [e.event_id for e in later] == [t.event_id for t in ticks[150:]]
    ends = runtime_bus.end_offsets(MARKET_DATA)
    tail = list(store.replay(MARKET_DATA, from_offset=90))
    assert len(tail) == sum(max(end - 90, 0) for end in ends.values())


def test_a_service_needs_inputs(runtime_bus):
    class NoInputs(Service):
        name = "none"

    with pytest.raises(ValueError, match="declares no input topics"):
        ServiceRunner(NoInputs(), runtime_bus)


def test_context_emit_fills_the_envelope():
    [tick] = make_ticks(1)
    from tradepipe.runtime import Context

    ctx = Context("feature-engineering")
    ctx.begin(tick)
    first = ctx.emit(FeaturesCalculated, timeframe="1m", features={"rsi": 50.0})
    second = ctx.emit(FeaturesCalculated, timeframe="5m", features={})
    assert first.event_id != second.event_id and first.event_id.version == 7
    assert first.metadata.producer == "feature-engineering" and first.metadata.version == "1.0"
    assert type(first.metadata).__name__ == "FeaturesMetadata"
    ctx.begin(tick)
    assert ctx.emit(FeaturesCalculated, timeframe="1m", features={"rsi": 50.0}) == first


def test_dead_letters_of_undecodable_records_have_stable_ids(runtime_bus):
    producer = runtime_bus.producer()
    producer.send(MARKET_DATA, b"\x00not json", b"EURUSD", timestamp_ms=1_400_000_000_000)
    producer.flush()
    ServiceRunner(TickStats(), runtime_bus, group="one", config=FAST_RETRY).run(until_idle=True)
    ServiceRunner(TickStats(), runtime_bus, group="two", config=FAST_RETRY).run(until_idle=True)
    first, second = replay(runtime_bus, DEAD_LETTER)
    assert first == second  # the same record dead-lettered twice: one id, to be deduplicated
    assert first.timestamp_ms == 1_400_000_000_000


def test_instances_of_one_group_keep_their_own_checkpoints(runtime_bus):
    EventStore(runtime_bus).append(make_ticks(400))
    a = ServiceRunner(TickStats(), runtime_bus, instance_id="a", config=FAST_RETRY)
    b = ServiceRunner(TickStats(), runtime_bus, instance_id="b", config=FAST_RETRY)
    assert a.consumer.assignment().isdisjoint(b.consumer.assignment())
    a.run(until_idle=True)
    b.run(until_idle=True)
    total = sum(a.service.count.values()) + sum(b.service.count.values())
    assert total == 400
    a.close()
    b.close()
    restored = [ServiceRunner(TickStats(), runtime_bus, instance_id=i, config=FAST_RETRY) for i in "ab"]
    assert [r.service.snapshot() for r in restored] == [a.service.snapshot(), b.service.snapshot()]


class Heartbeat(Service):
    """Emits an AlertRaised on every timer call: shows the live runner calls on_timer."""

    name = "heartbeat"
    inputs = (MARKET_DATA,)

    def handle(self, event, ctx):
        return []

    def on_timer(self, ctx):
        from tradepipe.events import AlertRaised

        return [ctx.emit(AlertRaised, rule="idle", severity="info", message="no input")]


def test_on_timer_runs_live_only(runtime_bus):
    from tradepipe.events import SYSTEM
    from tradepipe.runtime import WallClock

    quick = RunnerConfig(poll_timeout_s=0.0)
    ServiceRunner(Heartbeat(), runtime_bus, group="backtest", config=quick).step()
    assert replay(runtime_bus, SYSTEM) == []  # event time: the clock only moves with events
    live = ServiceRunner(Heartbeat(), runtime_bus, group="live", config=quick, clock=WallClock())
    live.step()
    live.step()
    alerts = replay(runtime_bus, SYSTEM)
    assert [a.rule for a in alerts] == ["idle", "idle"] and alerts[0].metadata.producer == "heartbeat"
