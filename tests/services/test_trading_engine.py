"""The trading engine (R7.2) on hand-built ticks and validated signals: orders, fills, exits
with their exact PnL, reversal, risk refusals, the kill switch, commands, live configuration,
snapshot/restore continuity; once through the in-process kernel."""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from tradepipe.config import TradingSettings
from tradepipe.events import Event
from tradepipe.events.types import (
    OHLC,
    AlertRaised,
    AlertResolved,
    BarClosed,
    ConfigurationUpdated,
    MarketDataReceived,
    OrderExecuted,
    OrderPlaced,
    OrderRejected,
    PositionClosed,
    SignalValidated,
    TickData,
    TradingCommand,
    TradingStateChanged,
)
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.services.trading_engine import TradingEngine
from tradepipe.trading.account import NEVER, QuietBand

UTC = timezone.utc
T0 = datetime(2014, 5, 5, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SETTINGS = TradingSettings(sizing="fixed", fixed_units=100_000, slippage_bps=0.0, commission_per_million=30.0)


def commission(units: float, price: float) -> float:
    return units * price * 30.0 / 1e6


class Upstream:
    """Root ticks and SignalValidated events shaped as the data bridge and validator emit them:
    a signal carries the correlationId of the tick that closed its bar."""

    def __init__(self) -> None:
        self.ctx = Context("test")
        self.roots = 0

    def _begin(self) -> None:
        self.roots += 1
        self.ctx.begin(None, key=b"root-%d" % self.roots)

    def tick(self, bid: float, ask: float, at: datetime, symbol: str = "EURUSD") -> MarketDataReceived:
        self._begin()
        return self.ctx.emit(MarketDataReceived, symbol=symbol, source="test", timestamp=at,
                             data=TickData(bid=bid, ask=ask, timestamp=at))

    def signal(self, direction: str, cause: MarketDataReceived, *, stop_loss: float | None = None,
               target_price: float | None = None) -> SignalValidated:
        self._begin()
        at = cause.timestamp
        return self.ctx.emit(SignalValidated, symbol=cause.symbol, signal_id=uuid.UUID(int=self.roots),
                             direction=direction, confidence=0.7, timeframe="1m", bar_time=at - MINUTE,
                             price=cause.data.bid, stop_loss=stop_loss, target_price=target_price, timestamp=at,
                             correlation_id=cause.event_id, causation_id=cause.event_id)

    def command(self, command: str, at: datetime, order_id: str = "", reason: str = "") -> TradingCommand:
        self._begin()
        return self.ctx.emit(TradingCommand, command=command, order_id=order_id, reason=reason, timestamp=at)

    def configure(self, at: datetime, **changes) -> ConfigurationUpdated:
        self._begin()
        return self.ctx.emit(ConfigurationUpdated, changes=changes, timestamp=at)


class Driven:
    """An engine handling one event at a time, as a runner would."""

    def __init__(self, settings: TradingSettings = SETTINGS, **options) -> None:
        self.engine = TradingEngine(settings, **options)
        self.ctx = Context(self.engine.name)

    def __call__(self, event: Event) -> list[Event]:
        self.ctx.begin(event)
        return list(self.engine.handle(event, self.ctx))


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


@pytest.fixture
def up() -> Upstream:
    return Upstream()


def open_long(up: Upstream, engine: Driven, **signal_fields) -> tuple[MarketDataReceived, SignalValidated, list[Event]]:
    tick = up.tick(1.1000, 1.1002, T0)
    assert engine(tick) == []
    signal = up.signal("BUY", tick, **signal_fields)
    return tick, signal, engine(signal)


def test_a_signal_opens_a_position_at_the_ask(up):
    engine = Driven()
    tick, signal, out = open_long(up, engine, stop_loss=1.0990, target_price=1.1020)
    placed, executed = out
    order_id = "ord-" + hashlib.blake2b(signal.event_id.bytes, digest_size=8).hexdigest()
    assert placed == OrderPlaced(
        event_id=placed.event_id, timestamp=T0, correlation_id=tick.event_id, causation_id=signal.event_id,
        symbol="EURUSD", metadata=placed.metadata, order_id=order_id, side="BUY", volume=100_000, price=1.1002,
        stop_loss=1.0990, take_profit=1.1020, broker="paper", position_id=order_id, reason="signal")
    assert isinstance(executed, OrderExecuted)
    assert (executed.order_id, executed.position_id, executed.side) == (order_id, order_id, "BUY")
    assert executed.volume == 100_000
    assert (executed.price, executed.commission) == (1.1002, pytest.approx(commission(100_000, 1.1002)))
    assert (executed.correlation_id, executed.causation_id) == (tick.event_id, placed.event_id)
    position = engine.engine.account.positions[order_id]
    assert position.exit_at == T0 + 5 * MINUTE  # the signal bar (09:59) closed at 10:00, + 5 bars
    assert position.correlation_id == tick.event_id
    # marked at the bid right away: the spread and the commission are the loss so far
    assert engine.engine.account.equity == pytest.approx(100_000 - 20 - commission(100_000, 1.1002))


def test_the_order_id_is_the_same_after_a_restart(up):
    _, signal, first = open_long(up, Driven())
    again = Driven()
    again(up.tick(1.1000, 1.1002, T0))
    assert again(signal)[0].order_id == first[0].order_id


def test_stop_loss_exit_on_a_later_tick_with_exact_pnl(up):
    engine = Driven()
    tick, _, (placed, _) = open_long(up, engine, stop_loss=1.0990, target_price=1.1020)
    assert engine(up.tick(1.0991, 1.0993, T0 + timedelta(seconds=10))) == []  # above the stop
    out = engine(up.tick(1.0989, 1.0991, T0 + timedelta(seconds=20)))
    assert types(out) == ["OrderPlaced", "OrderExecuted", "PositionClosed"]
    close, executed, closed = out
    assert (close.side, close.reason, close.position_id, close.price) == ("SELL", "stop-loss", placed.order_id, 1.0989)
    assert {e.correlation_id for e in out} == {tick.event_id}
    assert closed == PositionClosed(
        event_id=closed.event_id, timestamp=T0 + timedelta(seconds=20), correlation_id=tick.event_id,
        causation_id=executed.event_id, symbol="EURUSD", metadata=closed.metadata, position_id=placed.order_id,
        side="BUY", volume=100_000, entry_price=1.1002, exit_price=1.0989,
        pnl=pytest.approx(-130.0 - commission(100_000, 1.1002) - commission(100_000, 1.0989)),
        reason="stop-loss", order_id=close.order_id, opened_at=T0)
    account = engine.engine.account
    assert account.positions == {} and account.realized_pnl == pytest.approx(closed.pnl)
    assert account.equity == pytest.approx(100_000 + closed.pnl)


def test_take_profit_exit(up):
    engine = Driven()
    open_long(up, engine, stop_loss=1.0990, target_price=1.1020)
    closed = engine(up.tick(1.1021, 1.1023, T0 + MINUTE))[-1]
    assert (closed.reason, closed.exit_price) == ("take-profit", 1.1021)
    assert closed.pnl == pytest.approx(190.0 - commission(100_000, 1.1002) - commission(100_000, 1.1021))


def test_horizon_exit_at_the_deadline(up):
    engine = Driven()
    open_long(up, engine)  # default stop 10 bp below the entry
    assert engine(up.tick(1.1001, 1.1003, T0 + 5 * MINUTE - timedelta(milliseconds=1))) == []
    closed = engine(up.tick(1.1001, 1.1003, T0 + 5 * MINUTE))[-1]
    assert (closed.reason, closed.exit_price) == ("horizon", 1.1001)


def test_a_short_stops_out_at_the_ask(up):
    engine = Driven()
    tick = up.tick(1.1000, 1.1002, T0)
    engine(tick)
    placed, _ = engine(up.signal("SELL", tick))
    assert (placed.price, placed.stop_loss) == (1.1000, pytest.approx(1.1000 * 1.001))  # default stop
    assert engine(up.tick(1.1009, 1.1010, T0 + MINUTE)) == []
    closed = engine(up.tick(1.1010, 1.1012, T0 + 2 * MINUTE))[-1]
    assert (closed.reason, closed.side, closed.exit_price) == ("stop-loss", "SELL", 1.1012)
    assert closed.pnl == pytest.approx(-120.0 - commission(100_000, 1.1000) - commission(100_000, 1.1012))


def test_an_opposite_signal_closes_the_position_first(up):
    engine = Driven()
    first_tick, _, (opened, _) = open_long(up, engine)
    tick = up.tick(1.1010, 1.1012, T0 + MINUTE)
    engine(tick)
    out = engine(up.signal("SELL", tick))
    assert types(out) == ["OrderPlaced", "OrderExecuted", "PositionClosed", "OrderPlaced", "OrderExecuted"]
    close, _, closed, placed, _ = out
    assert (close.reason, closed.reason, closed.position_id) == ("reversal", "reversal", opened.order_id)
    assert closed.correlation_id == first_tick.event_id  # the exit keeps the opening signal's correlation
    assert closed.pnl == pytest.approx(80.0 - commission(100_000, 1.1002) - commission(100_000, 1.1010))
    assert (placed.side, placed.reason, placed.correlation_id) == ("SELL", "signal", tick.event_id)
    (position,) = engine.engine.account.positions.values()
    assert (position.side, position.entry_price) == ("SELL", 1.1010)


def test_refusals_carry_the_risk_reason_and_place_nothing(up):
    engine = Driven(TradingSettings(sizing="fixed", fixed_units=200_000, max_order_units=1_000_000, max_position_units=300_000))
    early = up.tick(1.1000, 1.1002, T0, symbol="NZDUSD")
    assert [e.reason for e in engine(up.signal("BUY", early))] == ["risk: no market price for NZDUSD yet"]
    tick = up.tick(1.1000, 1.1002, T0)
    engine(tick)
    assert [e.reason for e in engine(up.signal("HOLD", tick))] == ["risk: a HOLD signal has nothing to trade"]
    assert types(engine(up.signal("BUY", tick))) == ["OrderPlaced", "OrderExecuted"]
    (refused,) = engine(up.signal("BUY", tick))
    assert isinstance(refused, OrderRejected)
    assert refused.reason == "risk: max position 300,000 units on EURUSD: open 200,000 + order 200,000"
    assert engine.engine.counters["rejected_by_risk"] == 3 and engine.engine.counters["orders_placed"] == 1


def test_risk_sizing_uses_the_signals_stop(up):
    engine = Driven(TradingSettings(sizing="risk", risk_per_trade=0.0025, commission_per_million=0.0, max_order_units=1_000_000))
    _, _, (placed, _) = open_long(up, engine, stop_loss=1.0992)  # 10 pips under the ask: 250 / 0.0010
    assert placed.volume == 250_000


def test_ticks_without_positions_and_bars_emit_nothing(up):
    engine = Driven()
    tick = up.tick(1.1000, 1.1002, T0)
    assert engine(tick) == []
    assert engine.engine.quotes["EURUSD"] is tick.data
    bar = BarClosed(event_id=uuid.uuid4(), timestamp=T0, symbol="EURUSD", timeframe="1m", bar_time=T0 - MINUTE,
                    bid=OHLC(open=1, high=1, low=1, close=1), ask=OHLC(open=1, high=1, low=1, close=1),
                    mid=OHLC(open=1, high=1, low=1, close=1), tick_count=1, spread_mean=0, spread_max=0)
    assert engine(bar) == []
    assert engine.engine.account.equity == 100_000


def test_kill_switch_halts_flattens_and_resume_reenables_through_the_kernel(up):
    engine = TradingEngine(TradingSettings(sizing="fixed", fixed_units=200_000, max_order_units=1_000_000, max_drawdown=0.01,
                                           slippage_bps=0.0, commission_per_million=30.0))
    seen: list[Event] = []
    kernel = InProcessPipeline([engine], on_event=seen.append)
    tick = up.tick(1.1000, 1.1002, T0)
    kernel.feed(tick)
    kernel.feed(up.signal("BUY", tick, stop_loss=1.0500))
    seen.clear()
    crash = up.tick(1.0950, 1.0952, T0 + MINUTE)
    kernel.feed(crash)
    assert types(seen[1:]) == ["TradingStateChanged", "AlertRaised", "OrderPlaced", "OrderExecuted", "PositionClosed"]
    state, alert, close, _, closed = seen[1:]
    equity = 100_000 - commission(200_000, 1.1002) - 1_040.0
    assert (state.state, state.equity) == ("HALTED", pytest.approx(equity))
    assert state.drawdown == pytest.approx(1 - equity / 100_000)
    assert state.reason == ("kill switch: drawdown 1.05% of peak equity 100,000.00 reached the limit 1.00% "
                            "(equity 98,953.40)")
    assert alert == AlertRaised(event_id=alert.event_id, timestamp=alert.timestamp, correlation_id=crash.event_id,
                                causation_id=crash.event_id, symbol="EURUSD", metadata=alert.metadata,
                                rule="max_drawdown", severity="critical", message=state.reason,
                                value=state.drawdown, threshold=0.01)
    assert (close.reason, closed.reason, closed.exit_price) == ("kill-switch", "kill-switch", 1.0950)
    assert closed.pnl == pytest.approx(-1_040.0 - commission(200_000, 1.1002) - commission(200_000, 1.0950))
    assert engine.account.positions == {}

    seen.clear()
    later = up.tick(1.0960, 1.0962, T0 + 2 * MINUTE)
    kernel.feed(later)
    kernel.feed(up.signal("BUY", later))
    assert [e.reason for e in seen if isinstance(e, OrderRejected)] == [f"risk: trading halted ({state.reason})"]
    assert not any(isinstance(e, OrderPlaced) for e in seen)

    seen.clear()
    kernel.feed(up.command("resume", T0 + 3 * MINUTE, reason="reviewed"))
    (resumed,) = [e for e in seen if isinstance(e, TradingStateChanged)]
    assert (resumed.state, resumed.reason, resumed.drawdown) == ("ACTIVE", "manual resume: reviewed", 0.0)
    (cleared,) = [e for e in seen if isinstance(e, AlertResolved)]  # the kill switch's alert ends
    assert (cleared.rule, cleared.subject, cleared.message, cleared.value) == (
        "max_drawdown", "", "manual resume: reviewed", 0.0)
    assert engine.account.peak_equity == pytest.approx(100_000 + closed.pnl)
    kernel.feed(up.signal("BUY", later))
    assert types(seen[-2:]) == ["OrderPlaced", "OrderExecuted"]
    assert kernel.counts["DeadLetter"] == 0
    assert engine.summary()["max_drawdown"] == pytest.approx(1 - equity / 100_000)


def test_manual_halt_keeps_positions_and_refuses_signals(up):
    engine = Driven()
    tick, _, _ = open_long(up, engine)
    (halted,) = engine(up.command("halt", T0, reason="maintenance"))
    assert (halted.state, halted.reason) == ("HALTED", "manual halt: maintenance")
    assert len(engine.engine.account.positions) == 1
    assert engine(up.signal("SELL", tick))[0].reason == "risk: trading halted (manual halt: maintenance)"
    assert len(engine.engine.account.positions) == 1  # refused signals do not reverse either


def test_flatten_closes_the_position_of_an_order_and_unknown_ids_are_counted(up):
    engine = Driven()
    tick, _, (placed, _) = open_long(up, engine)
    out = engine(up.command("flatten", T0 + MINUTE, order_id=placed.order_id, reason="saga timed out"))
    assert [e.reason for e in out if isinstance(e, (OrderPlaced, PositionClosed))] == ["compensation"] * 2
    assert out[-1].correlation_id == tick.event_id and engine.engine.account.positions == {}
    assert engine(up.command("flatten", T0 + MINUTE, order_id=placed.order_id)) == []  # already closed
    assert engine(up.command("flatten", T0 + MINUTE, order_id="ord-unknown")) == []
    assert engine(up.command("cancel", T0 + MINUTE, order_id=placed.order_id)) == []  # filled: nothing pending
    assert engine.engine.counters["unmatched_commands"] == 3


def test_configuration_update_applies_or_alerts_and_keeps_the_old_limits(up):
    engine = Driven()
    assert engine(up.configure(T0, **{"trading.fixed_units": 50_000, "validator.min_confidence": 0.9})) == []
    (alert,) = engine(up.configure(T0, **{"trading.max_drawdown": 2, "trading.fixed_units": 1_000}))
    assert (alert.rule, alert.severity) == ("configuration", "warning")
    assert alert.message.startswith("configuration update refused: trading.max_drawdown:")
    assert (engine.engine.settings.fixed_units, engine.engine.settings.max_drawdown) == (50_000, 0.05)
    _, _, (placed, _) = open_long(up, engine)
    assert placed.volume == 50_000


def test_a_restored_engine_continues_exactly_as_an_uninterrupted_one(up):
    settings = TradingSettings(sizing="fixed", fixed_units=200_000, max_order_units=1_000_000, max_drawdown=0.01, commission_per_million=30.0)
    t1 = up.tick(1.1000, 1.1002, T0)
    t2 = up.tick(1.1010, 1.1012, T0 + MINUTE)
    events = [
        t1, up.signal("BUY", t1), up.configure(T0, **{"trading.fixed_units": 150_000}),
        t2, up.signal("SELL", t2, stop_loss=1.2000),
        # restart here; then the kill switch trips at 1.1080 (-1,050 on 150,000 short)
        up.tick(1.1020, 1.1022, T0 + 2 * MINUTE), up.tick(1.1080, 1.1082, T0 + 3 * MINUTE),
        up.tick(1.0900, 1.0902, T0 + 4 * MINUTE, symbol="NZDUSD"),
        up.command("resume", T0 + 5 * MINUTE), up.signal("BUY", t2),
        up.tick(1.1100, 1.1102, T0 + 20 * MINUTE),
    ]
    whole = Driven(settings)
    expected = [out for event in events for out in whole(event)]
    first = Driven(settings)
    before = [out for event in events[:5] for out in first(event)]
    restarted = Driven(settings)
    restarted.engine.restore(msgspec.json.decode(msgspec.json.encode(first.engine.snapshot())))
    after = [out for event in events[5:] for out in restarted(event)]
    assert before + after == expected
    milestones = [e.reason if isinstance(e, PositionClosed) else e.state
                  for e in expected if isinstance(e, (TradingStateChanged, PositionClosed))]
    assert milestones == ["reversal", "HALTED", "kill-switch", "ACTIVE", "horizon"]
    assert len(after) > len(before)
    assert restarted.engine.snapshot() == whole.engine.snapshot()
    assert restarted.engine.summary() == whole.engine.summary()


def test_a_broken_quote_refuses_the_signal_instead_of_crashing(up):
    engine = Driven()
    tick = up.tick(0.0, 0.0, T0)
    engine(tick)
    assert [e.reason for e in engine(up.signal("BUY", tick))] == [
        "risk: no valid market price for EURUSD (bid 0.0, ask 0.0)"]


def test_exit_after_bars_setting_overrides_the_models_horizon(up):
    engine = Driven(SETTINGS.model_copy(update={"exit_after_bars": 2}), exit_after_bars=5)
    _, _, (placed, _) = open_long(up, engine)
    assert engine.engine.account.positions[placed.order_id].exit_at == T0 + 2 * MINUTE


def random_session(up: Upstream, ticks: int = 4000) -> list[Event]:
    """A random walk of EURUSD quotes with a signal on one tick in 97 (alternating sides, stops
    and targets 3-8 pips away, so stops, targets, horizons and reversals all happen), a
    resume after the kill switch, and midnight."""
    rng = random.Random(7)
    events: list[Event] = []
    mid, at = 1.1000, T0 + timedelta(hours=13)
    for i in range(ticks):
        mid += rng.choice((-1, 1)) * rng.choice((0.00002, 0.00005, 0.0001))
        at += timedelta(seconds=rng.choice((1, 2, 5)))
        tick = up.tick(round(mid - 0.00005, 5), round(mid + 0.00005, 5), at)
        events.append(tick)
        if rng.random() < 1 / 97:
            side = "BUY" if len(events) % 2 else "SELL"
            sign = 1 if side == "BUY" else -1
            events.append(up.signal(side, tick, stop_loss=mid - sign * rng.randint(3, 8) * 1e-4,
                                    target_price=mid + sign * rng.randint(3, 8) * 1e-4))
        if i == ticks // 2:
            events.append(up.command("resume", at, reason="after the kill switch"))
    return events


def test_the_quiet_band_and_the_drawdown_ratio_change_no_output(up, monkeypatch):
    """The engine's cheap tick tests decide nothing the exact checks would decide otherwise:
    an engine whose every tick takes the exact path emits the same events, ends in the same
    state and sees the same largest drawdown."""
    settings = SETTINGS.model_copy(update={"max_drawdown": 0.004})
    events = random_session(up)

    def run() -> tuple[list[bytes], dict, dict]:
        engine = Driven(settings)
        out = [msgspec.json.encode(e) for event in events for e in engine(event)]
        return out, engine.engine.snapshot(), engine.engine.summary()

    fast = run()
    nan_band = QuietBand(*[math.nan] * 4, until=NEVER)  # compares false: every tick checks every exit
    monkeypatch.setattr(QuietBand, "of", classmethod(lambda cls, positions: nan_band))
    monkeypatch.setattr(TradingEngine, "_ratio_without_alarm", lambda self: math.inf)  # every tick: the division
    exact = run()
    assert fast == exact
    reasons = Counter(msgspec.json.decode(e)["reason"] for e in fast[0] if b'"PositionClosed"' in e)
    assert {"stop-loss", "take-profit", "horizon", "reversal", "kill-switch"} <= set(reasons)
    assert fast[2]["max_drawdown"] >= 0.004


def test_resume_while_active_moves_no_peak_and_a_halt_keeps_the_kill_switchs_reason(up):
    engine = Driven(TradingSettings(sizing="fixed", fixed_units=200_000, max_order_units=1_000_000,
                                    max_drawdown=0.01, flatten_on_halt=False))
    tick, _, _ = open_long(up, engine, stop_loss=1.0500)
    engine(up.tick(1.0990, 1.0992, T0 + MINUTE))  # 0.2 % down: the peak stays at 100,000
    (answer,) = engine(up.command("resume", T0 + MINUTE))
    assert (answer.state, answer.reason) == ("ACTIVE", "resume ignored: trading is not halted")
    assert engine.engine.account.peak_equity == 100_000 and engine.engine.counters["unmatched_commands"] == 1
    tripped = engine(up.tick(1.0940, 1.0942, T0 + 2 * MINUTE))
    assert types(tripped) == ["TradingStateChanged", "AlertRaised"]  # no flatten when told so
    (halted,) = engine(up.command("halt", T0 + 3 * MINUTE, reason="operator"))
    assert halted.reason == tripped[0].reason and halted.reason.startswith("kill switch")


def test_the_daily_loss_limit_refuses_orders_until_the_next_utc_day(up):
    engine = Driven(TradingSettings(sizing="fixed", fixed_units=200_000, max_order_units=1_000_000,
                                    max_daily_loss=0.005, max_drawdown=0.5, commission_per_million=0.0,
                                    slippage_bps=0.0))
    tick, _, _ = open_long(up, engine, stop_loss=1.0500)
    loss = up.tick(1.0970, 1.0972, T0 + MINUTE)  # -640 on 200,000: beyond 0.5 % of the day's 100,000
    engine(loss)
    (refused,) = engine(up.signal("BUY", loss))
    assert refused.reason.startswith("risk: daily loss limit reached: equity 99,360.00 is at or below 99,500.00")
    midnight = datetime(2014, 5, 6, 0, 0, 5, tzinfo=UTC)
    tomorrow = up.tick(1.0970, 1.0972, midnight)
    assert types(engine(tomorrow))[-1] == "PositionClosed"  # its horizon passed overnight
    assert types(engine(up.signal("BUY", tomorrow))) == ["OrderPlaced", "OrderExecuted"]  # a new day, a new limit
    assert engine.engine.account.day_start_equity == pytest.approx(99_360.0)


def test_settings_a_running_account_cannot_take_are_refused_live(up):
    engine = Driven()
    (alert,) = engine(up.configure(T0, **{"trading.broker": "mt5", "trading.fixed_units": 5_000}))
    assert alert.rule == "configuration" and "trading.broker cannot change while the account is running" in alert.message
    assert engine.engine.settings == SETTINGS and engine.engine.broker.name == "paper"
