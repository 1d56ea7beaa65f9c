"""The in-process kernel: same services, direct dispatch, deterministic, every event recorded."""

from __future__ import annotations

from tick_stats import TickStats, make_ticks

from tradepipe.bus import open_bus
from tradepipe.events import DEAD_LETTER, FEATURES, FeaturesCalculated, JsonCodec
from tradepipe.runtime import Service
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.runner import ServiceRunner, ensure_topics
from tradepipe.runtime.store import EventStore


class Doubler(Service):
    """Consumes TickStats' FeaturesCalculated: shows outputs are dispatched onwards."""

    name = "doubler"
    inputs = (FEATURES,)

    def handle(self, event, ctx):
        if event.group != "tick-stats":
            return []
        return [ctx.emit(FeaturesCalculated, timeframe="tick", group="doubler",
                         features={"twice": 2 * event.features["count"]})]


class Exploding(Service):
    name = "exploding"
    inputs = (FEATURES,)

    def handle(self, event, ctx):
        raise ZeroDivisionError("boom")


def test_outputs_flow_on_and_everything_is_recorded():
    bus = open_bus("memory://")
    ensure_topics(bus)
    kernel = InProcessPipeline([TickStats(), Doubler()], bus)
    ticks = make_ticks(1000)
    kernel.feed_all(ticks)
    kernel.close()
    assert kernel.counts == {"MarketDataReceived": 1000, "FeaturesCalculated": 20}
    stored = [s.event for s in EventStore(bus).replay(FEATURES)]
    doubled = sorted(e.features["twice"] for e in stored if e.group == "doubler")
    assert doubled == sorted(2.0 * n for n in range(100, 501, 100) for _ in range(2))
    by_id = {e.event_id: e for e in stored}
    for e in stored:
        if e.group == "doubler":  # causal chain: tick -> tick-stats -> doubler, one correlation
            parent = by_id[e.causation_id]
            assert parent.group == "tick-stats" and e.correlation_id == parent.correlation_id


def test_the_kernel_and_a_bus_runner_produce_the_same_events():
    ticks = make_ticks(600)
    in_process = []
    kernel = InProcessPipeline([TickStats()], on_event=in_process.append)
    kernel.feed_all(ticks)
    bus = open_bus("memory://")
    ensure_topics(bus)
    EventStore(bus).append(ticks)
    ServiceRunner(TickStats(), bus).run(until_idle=True)
    on_bus = [s.event for s in EventStore(bus).replay(FEATURES)]
    kernel_outputs = [e for e in in_process if type(e) is FeaturesCalculated]
    assert sorted(kernel_outputs, key=lambda e: e.event_id) == sorted(on_bus, key=lambda e: e.event_id)


def test_a_failing_handler_dead_letters_its_input_and_the_run_goes_on():
    bus = open_bus("memory://")
    ensure_topics(bus)
    kernel = InProcessPipeline([TickStats(), Exploding(), Doubler()], bus)
    kernel.feed_all(make_ticks(400))
    kernel.close()
    letters = [s.event for s in EventStore(bus).replay(DEAD_LETTER)]
    assert len(letters) == 8  # every FeaturesCalculated: 4 from tick-stats, 4 from doubler
    assert {letter.reason for letter in letters} == {"ZeroDivisionError: boom"}
    assert all(JsonCodec().decode(letter.original).event_id == letter.causation_id for letter in letters)
    assert kernel.counts["FeaturesCalculated"] == 8
