"""The MetaTrader 5 broker against the stand-in terminal (``tests/sources/mt5_standin.py``;
the real one needs Windows): the request it sends, lots and filling modes, each result code,
position tickets for closing orders, and the engine's view of a broker refusal."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sources import mt5_standin

from tradepipe.config import TradingSettings
from tradepipe.events.types import MarketDataReceived, OrderPlaced, OrderRejected, SignalValidated, TickData
from tradepipe.runtime.service import Context
from tradepipe.services.trading_engine import TradingEngine
from tradepipe.trading.brokers import BrokerRejection, Fill, Mt5Broker, OrderRequest, Quote

EURUSD = mt5_standin.real_ticks("eurusd_ticks_2014-05.csv.gz", 50)
LAST = EURUSD[-1]
QUOTE = Quote(bid=LAST.bid, ask=LAST.ask, time=datetime.fromtimestamp(LAST.ts_ms / 1000, timezone.utc))
MAGIC = 20_261_124


@pytest.fixture(autouse=True)
def terminal():
    mt5_standin.serve({"EURUSD": mt5_standin.as_server_ticks(EURUSD, 0)})
    mt5_standin.initialize()
    yield mt5_standin
    mt5_standin.shutdown()


def broker() -> Mt5Broker:
    return Mt5Broker(mt5_standin, magic=MAGIC, deviation_points=10)


def buy(units: float = 12_345, order_id: str = "ord-a", **fields) -> OrderRequest:
    return OrderRequest(order_id=order_id, symbol="EURUSD", side="BUY", units=units, position_id=order_id, **fields)


def test_an_opening_buy_sends_exactly_the_fields_mt5_expects_and_fills():
    fill = broker().submit(buy(stop_loss=1.3800, take_profit=1.3900), QUOTE)
    (request,) = mt5_standin.sent_requests()
    assert request == {
        "action": 1, "symbol": "EURUSD", "volume": 0.12, "type": 0, "price": LAST.ask, "sl": 1.3800,
        "tp": 1.3900, "deviation": 10, "magic": MAGIC, "comment": "tradepipe", "type_time": 0, "type_filling": 0,
    }
    (position,) = mt5_standin.positions_get(symbol="EURUSD")
    assert fill == Fill(order_id="ord-a", price=LAST.ask, units=12_000, slippage=0.0, ticket=position.ticket + 1)
    assert (position.volume, position.magic, position.price_open) == (0.12, MAGIC, LAST.ask)


def test_a_sell_is_priced_at_the_bid_and_no_targets_are_zero():
    fill = broker().submit(OrderRequest(order_id="ord-s", symbol="EURUSD", side="SELL", units=100_000), QUOTE)
    (request,) = mt5_standin.sent_requests()
    assert (request["type"], request["price"], request["sl"], request["tp"]) == (1, LAST.bid, 0.0, 0.0)
    assert (fill.price, fill.units) == (LAST.bid, 100_000)


@pytest.mark.parametrize(("filling_mode", "type_filling"), [(1, 0), (3, 0), (2, 1), (0, 2)])
def test_filling_type_follows_the_symbols_filling_mode(filling_mode, type_filling):
    mt5_standin.set_symbol("EURUSD", filling_mode=filling_mode)
    assert isinstance(broker().submit(buy(), QUOTE), Fill)
    assert mt5_standin.sent_requests()[0]["type_filling"] == type_filling


def test_below_the_minimum_volume_is_refused_before_sending():
    result = broker().submit(buy(units=900), QUOTE)
    assert result == BrokerRejection(
        order_id="ord-a", code="VOLUME_BELOW_MIN",
        reason="900 units of EURUSD is 0 lots, below the minimum 0.01 lots (contract 100,000 units, step 0.01)")
    assert mt5_standin.sent_requests() == []


def test_a_closing_order_names_the_position_ticket_and_closes_it():
    mt5 = broker()
    mt5.submit(buy(units=50_000), QUOTE)
    (opened,) = mt5_standin.positions_get()
    assert mt5.tickets == {"ord-a": opened.ticket}
    close = OrderRequest(order_id="ord-c", symbol="EURUSD", side="SELL", units=50_000, position_id="ord-a",
                         closes=True)
    fill = mt5.submit(close, QUOTE)
    assert mt5_standin.sent_requests()[-1]["position"] == opened.ticket
    assert (fill.price, fill.units) == (LAST.bid, 50_000)
    assert mt5_standin.positions_get() == ()
    assert mt5.tickets == {}
    again = mt5.submit(close, QUOTE)
    assert again.code == "UNKNOWN_POSITION" and "no MT5 position ticket known for position ord-a" in again.reason


def test_done_partial_fills_the_volume_the_server_took():
    mt5_standin.script_retcode(mt5_standin.TRADE_RETCODE_DONE_PARTIAL, 0.05)
    fill = broker().submit(buy(units=120_000), QUOTE)
    assert (fill.units, fill.price) == (5_000, LAST.ask)


@pytest.mark.parametrize(("retcode", "name", "comment"), [
    (10004, "TRADE_RETCODE_REQUOTE", "Requote"),
    (10006, "TRADE_RETCODE_REJECT", "Request rejected"),
    (10018, "TRADE_RETCODE_MARKET_CLOSED", "Market closed"),
    (10019, "TRADE_RETCODE_NO_MONEY", "No money"),
    (10021, "TRADE_RETCODE_PRICE_OFF", "No prices"),
    (10014, "TRADE_RETCODE_INVALID_VOLUME", "Invalid volume"),
])
def test_refusing_result_codes_become_rejections_named_by_the_code(retcode, name, comment):
    mt5_standin.script_retcode(retcode)
    mt5 = broker()
    expected = BrokerRejection(order_id="ord-a", code=name, reason=f"{name} ({retcode}): {comment}")
    assert mt5.submit(buy(), QUOTE) == expected
    assert mt5_standin.positions_get() == () and mt5.tickets == {}


def test_order_send_returning_none_reports_last_error():
    mt5_standin.script_failure(-10004, "No IPC connection")
    assert broker().submit(buy(), QUOTE) == BrokerRejection(
        order_id="ord-a", code="last_error -10004",
        reason="MetaTrader5 order_send failed: last_error -10004 'No IPC connection'")


def test_a_disconnected_terminal_is_a_rejection_not_a_crash():
    mt5_standin.shutdown()
    result = broker().submit(buy(), QUOTE)
    assert result.reason == "MetaTrader5 symbol_info('EURUSD') failed: last_error -10004 'No IPC connection'"


def test_tickets_survive_a_snapshot():
    mt5 = broker()
    mt5.submit(buy(), QUOTE)
    restored = broker()
    restored.restore(mt5.snapshot())
    assert restored.tickets == mt5.tickets and len(restored.tickets) == 1


def test_the_engine_reports_a_broker_refusal_and_opens_nothing():
    engine = TradingEngine(TradingSettings(broker="mt5", sizing="fixed", fixed_units=100_000),
                           Mt5Broker(mt5_standin, magic=MAGIC, deviation_points=10))
    source = Context("test")
    source.begin(None, key=b"tick")
    tick = source.emit(MarketDataReceived, symbol="EURUSD", source="mt5", timestamp=QUOTE.time,
                       data=TickData(bid=LAST.bid, ask=LAST.ask, timestamp=QUOTE.time))
    signal = source.emit(SignalValidated, symbol="EURUSD", signal_id=tick.event_id, direction="BUY", confidence=0.7,
                         timestamp=QUOTE.time, correlation_id=tick.event_id)
    ctx = Context(engine.name)
    ctx.begin(tick)
    assert list(engine.handle(tick, ctx)) == []
    mt5_standin.script_retcode(mt5_standin.TRADE_RETCODE_MARKET_CLOSED)
    ctx.begin(signal)
    placed, rejected = engine.handle(signal, ctx)
    assert isinstance(placed, OrderPlaced) and (placed.broker, placed.volume) == ("mt5", 100_000)
    assert isinstance(rejected, OrderRejected)
    assert rejected.reason == "broker: TRADE_RETCODE_MARKET_CLOSED (10018): Market closed"
    assert (rejected.order_id, rejected.correlation_id) == (placed.order_id, tick.event_id)
    assert engine.account.positions == {} and engine.counters["rejected_by_broker"] == 1


class EngineOnMt5:
    """The trading engine on the MT5 broker and the stand-in terminal, fed hand-built ticks."""

    def __init__(self, **settings) -> None:
        self.engine = TradingEngine(TradingSettings(broker="mt5", sizing="fixed", fixed_units=100_000, **settings),
                                    broker(), exit_after_bars=1)
        self.source, self.ctx, self.n = Context("test"), Context(self.engine.name), 0

    def _root(self) -> None:
        self.n += 1
        self.source.begin(None, key=b"root-%d" % self.n)

    def tick(self, seconds: float) -> list:
        self._root()
        at = QUOTE.time + timedelta(seconds=seconds)
        event = self.source.emit(MarketDataReceived, symbol="EURUSD", source="mt5", timestamp=at,
                                 data=TickData(bid=LAST.bid, ask=LAST.ask, timestamp=at))
        self.last_tick = event
        return self.handle(event)

    def signal(self, direction: str) -> list:
        self._root()
        at = self.last_tick.timestamp
        return self.handle(self.source.emit(
            SignalValidated, symbol="EURUSD", signal_id=self.last_tick.event_id, direction=direction, confidence=0.7,
            timeframe="1m", bar_time=at - timedelta(minutes=1), timestamp=at, correlation_id=self.last_tick.event_id))

    def handle(self, event) -> list:
        self.ctx.begin(event)
        return list(self.engine.handle(event, self.ctx))


def kinds(events) -> list[str]:
    return [e.type for e in events]


def test_a_refused_close_alerts_once_and_is_retried_with_backoff_not_on_every_tick():
    run = EngineOnMt5()
    run.tick(0)
    assert kinds(run.signal("BUY")) == ["OrderPlaced", "OrderExecuted"]
    for _ in range(3):
        mt5_standin.script_retcode(mt5_standin.TRADE_RETCODE_MARKET_CLOSED)
    first = run.tick(60)  # the horizon (1 bar after the fill): the close is refused
    assert kinds(first) == ["OrderPlaced", "OrderRejected", "AlertRaised"]
    assert first[2].rule == "close_refused" and first[2].severity == "critical" and "Market closed" in first[2].message
    assert all(run.tick(60 + s) == [] for s in (0.2, 0.5, 0.9))  # waits 1 s, not a close per tick
    assert kinds(run.tick(61)) == ["OrderPlaced", "OrderRejected"]  # retried, refused again, no second alert
    assert run.tick(63) == [] and kinds(run.tick(66)) == ["OrderPlaced", "OrderRejected"]  # then after 5 s
    closed = run.tick(96)  # after 30 s: the broker takes it
    assert kinds(closed) == ["OrderPlaced", "OrderExecuted", "PositionClosed"] and closed[2].reason == "horizon"
    assert run.engine.close_retry == {} and run.engine.account.positions == {}


def test_a_refused_reversal_close_refuses_the_entry_so_one_side_is_held():
    run = EngineOnMt5()
    run.tick(0)
    run.signal("BUY")
    run.tick(1)
    mt5_standin.script_retcode(mt5_standin.TRADE_RETCODE_REJECT)
    out = run.signal("SELL")
    assert kinds(out) == ["OrderPlaced", "OrderRejected", "AlertRaised", "OrderRejected"]
    assert out[0].reason == "reversal" and out[3].reason == "risk: reversal close refused: EURUSD still holds 100,000 units BUY"
    assert {p.side for p in run.engine.account.positions.values()} == {"BUY"}


def test_the_horizon_counts_from_the_fill_after_a_gap():
    run = EngineOnMt5()
    run.tick(0)
    signal_bar_end = run.last_tick.timestamp
    run.tick(3600)  # the first tick after a quiet hour fills a signal made on the bar before it
    run._root()
    out = run.handle(run.source.emit(
        SignalValidated, symbol="EURUSD", signal_id=run.last_tick.event_id, direction="BUY", confidence=0.7,
        timeframe="1m", bar_time=signal_bar_end - timedelta(minutes=1), timestamp=run.last_tick.timestamp,
        correlation_id=run.last_tick.event_id))
    assert kinds(out) == ["OrderPlaced", "OrderExecuted"]
    assert run.tick(3601) == []  # not closed on the next tick
    assert kinds(run.tick(3660))[-1] == "PositionClosed"  # one bar after the fill
