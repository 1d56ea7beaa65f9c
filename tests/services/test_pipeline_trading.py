"""run_pipeline from ticks to orders on the shipped sample: the decision stage (validator,
trading engine, saga, audit trail, analytics, notifier) behind tiny real models, and the EMA
cross strategy. Windows of the sample keep each run to seconds."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest

from tradepipe.bus import open_bus
from tradepipe.config import Settings
from tradepipe.events import MARKET_DATA, ORDERS, SYSTEM, VALIDATED
from tradepipe.events.types import (
    AlertRaised,
    OrderExecuted,
    OrderPlaced,
    OrderRejected,
    PositionClosed,
    SagaCompleted,
    SignalValidated,
    TradingStateChanged,
)
from tradepipe.pipeline import RunRequest, run_pipeline
from tradepipe.read.audit_log import AuditLog
from tradepipe.runtime.store import EventStore
from tradepipe.sources import sample_paths

UTC = timezone.utc
MORNING = (datetime(2014, 5, 5, 0, 0, tzinfo=UTC), datetime(2014, 5, 5, 10, 0, tzinfo=UTC))


def run(settings: Settings, registry=None, *, strategy="models", window=MORNING, audit_path=None):
    bus = open_bus("memory://")
    summary = run_pipeline(
        RunRequest(paths=sample_paths(), settings=settings, strategy=strategy, start=window[0], end=window[1],
                   audit_path=audit_path),
        bus, registry=registry)
    store = EventStore(bus)
    events = {topic: [s.event for s in store.replay(topic)] for topic in (MARKET_DATA, VALIDATED, ORDERS, SYSTEM)}
    bus.close()
    return summary, events


def of(events, cls):
    return [e for e in events if type(e) is cls]


@pytest.fixture(scope="module")
def morning(trained, tmp_path_factory):
    audit_path = tmp_path_factory.mktemp("audit") / "audit.db"
    summary, events = run(Settings(), trained.registry, audit_path=audit_path)
    return summary, events, audit_path


def test_ticks_become_validated_signals_orders_fills_and_closed_positions(morning):
    summary, events, _ = morning
    orders = events[ORDERS]
    placed = of(orders, OrderPlaced)
    validated = of(events[VALIDATED], SignalValidated)
    assert summary["signals"] == summary["validated"] + summary["rejected"] and summary["validated"] == len(validated)
    assert summary["orders"] == len(placed) > 0 and summary["fills"] == len(of(orders, OrderExecuted)) > 0
    assert summary["dead_letters"] == 0 and summary["trading_halted"] is False
    # every entry order answers a validated signal of its own correlation, carrying its stop and target
    by_correlation = {v.correlation_id: v for v in validated}
    entries = [p for p in placed if p.reason == "signal"]
    assert entries and all(p.correlation_id in by_correlation and p.position_id == p.order_id for p in entries)
    assert all(p.side == by_correlation[p.correlation_id].direction for p in entries)
    # exits carry the correlation of the signal that opened the position
    opened = {p.order_id: p.correlation_id for p in entries}
    closed = of(orders, PositionClosed)
    assert closed and all(c.correlation_id == opened[c.position_id] for c in closed)
    assert {c.reason for c in closed} <= {"stop-loss", "take-profit", "horizon", "reversal"}
    assert summary["realized_pnl"] == pytest.approx(sum(c.pnl for c in closed), abs=1e-6)
    # one saga per signal; a completed saga per filled entry
    sagas = of(orders, SagaCompleted)
    assert len(sagas) == summary["signals"] == sum(summary["sagas"].values())
    assert summary["sagas"]["COMPLETED"] == len(entries) - sum(1 for o in of(orders, OrderRejected)
                                                                 if o.order_id in opened)
    # latency is measured for every entry order, from the tick that closed its bar
    assert summary["latency_samples"] == len(entries)
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p99_ms"]


def test_the_files_are_merged_in_event_time(morning):
    summary, events, _ = morning
    times = [e.timestamp for e in events[MARKET_DATA]]
    assert times == sorted(times) and set(summary["symbols"]) == {"EURUSD", "NZDUSD"}
    assert all(MORNING[0] <= t < MORNING[1] for t in times)


def test_the_audit_trail_explains_every_filled_entry_completely(morning):
    summary, events, audit_path = morning
    with AuditLog(audit_path, create=False) as log:
        assert log.verify().ok
        entries = [p for p in of(events[ORDERS], OrderPlaced) if p.reason == "signal"]
        for placed in entries[:20]:
            x = log.explain(placed.order_id)
            assert x.missing == [], (placed.order_id, x.missing)
            assert x.tick.event_id == placed.correlation_id
            assert {f.group for f in x.features} == {"feature-engineering", "technical-analysis", "market-microstructure"}
            assert {p.metadata.producer for p in x.predictions} == {"ml-xgboost", "ml-lightgbm", "ml-lstm"}
            assert x.verdict.signal_id == x.signal.event_id and type(x.verdict) is SignalValidated
            assert placed in x.events and any(type(e) is OrderExecuted for e in x.events)


def test_a_kill_switch_tripping_mid_run_halts_with_an_alert_and_refuses_later_orders(trained):
    settings = Settings(trading={"max_drawdown": 0.002})
    summary, events = run(settings, trained.registry)
    halted = [e for e in of(events[SYSTEM], TradingStateChanged) if e.state == "HALTED"]
    assert len(halted) == 1 and halted[0].drawdown >= 0.002 and "kill switch" in halted[0].reason
    [alert] = [a for a in of(events[SYSTEM], AlertRaised) if a.rule == "max_drawdown"]
    assert alert.severity == "critical" and alert.threshold == 0.002
    later = [o for o in of(events[ORDERS], OrderRejected) if o.timestamp > halted[0].timestamp]
    assert later and all(o.reason.startswith("risk: trading halted") for o in later)
    # flattened: nothing is open after the halt, nothing new opens
    after = [p for p in of(events[ORDERS], OrderPlaced) if p.timestamp > halted[0].timestamp]
    assert all(p.reason != "signal" for p in after)
    assert summary["trading_halted"] is True and summary["dead_letters"] == 0 and summary["unrealized_pnl"] == 0


def test_the_same_data_and_models_give_the_same_orders(trained):
    window = (MORNING[0], datetime(2014, 5, 5, 4, 0, tzinfo=UTC))
    first, a = run(Settings(), trained.registry, window=window)
    second, b = run(Settings(), trained.registry, window=window)
    assert [e.event_id for e in a[ORDERS]] == [e.event_id for e in b[ORDERS]]
    assert [(o.order_id, o.volume, o.price) for o in of(a[ORDERS], OrderExecuted)] == [
        (o.order_id, o.volume, o.price) for o in of(b[ORDERS], OrderExecuted)]
    assert first["realized_pnl"] == second["realized_pnl"]


def test_the_ema_cross_strategy_trades_crosses_and_holds_until_the_next(tmp_path):
    summary, events = run(Settings(), strategy="ema-cross", window=(MORNING[0], datetime(2014, 5, 6, tzinfo=UTC)))
    assert summary["strategy"] == "ema-cross" and summary["features_events"] == summary["predictions"] == 0
    assert summary["bars"] > 0 and summary["signals"] > 10
    orders = events[ORDERS]
    closed = of(orders, PositionClosed)
    # no horizon exits: a position ends at its stop, its target or the opposite cross
    assert closed and "horizon" not in {c.reason for c in closed} and "reversal" in {c.reason for c in closed}
    assert Counter(type(e).__name__ for e in orders)["SagaCompleted"] == 0  # no features, no saga
