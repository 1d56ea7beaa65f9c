"""The account: PnL after commissions, marks at bid (long) / ask (short), exposure, drawdown,
the day's start equity, partial closes, exits, the quiet band and snapshots."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import itertools
import math

import msgspec
import pytest

from tradepipe.trading.account import NEVER, Account, Position, QuietBand

UTC = timezone.utc
T0 = datetime(2014, 5, 5, 10, 0, tzinfo=UTC)


def position(position_id="ord-1", side="BUY", units=100_000.0, entry=1.1000, commission=3.30, **fields) -> Position:
    return Position(position_id=position_id, symbol="EURUSD", side=side, units=units, entry_price=entry,
                    opened_at=T0, commission=commission, **fields)


def test_long_is_marked_at_the_bid_and_short_at_the_ask():
    account = Account(100_000.0)
    account.open(position("long", "BUY", 100_000, 1.1000, 3.30))
    account.open(position("short", "SELL", 50_000, 1.1010, 1.65))
    account.mark("EURUSD", 1.1020, 1.1023)
    assert account.unrealized_pnl == pytest.approx(100_000 * 0.0020 + 50_000 * (1.1010 - 1.1023))  # 200 - 65
    assert account.realized_pnl == pytest.approx(-4.95)  # commissions paid at the fills
    assert account.equity == pytest.approx(100_000 - 4.95 + 135.0)
    assert account.exposure() == pytest.approx(100_000 * 1.1020 + 50_000 * 1.1023)
    assert account.exposure("EURUSD", "SELL") == pytest.approx(50_000 * 1.1023)
    assert account.open_units("EURUSD", "BUY") == 100_000


def test_close_books_price_pnl_and_both_commissions():
    account = Account(100_000.0)
    account.open(position(commission=3.30))
    pnl = account.close("ord-1", 100_000, 1.0990, 3.297)
    assert pnl == pytest.approx(-100.0 - 3.30 - 3.297)
    assert account.realized_pnl == pytest.approx(pnl)
    assert account.positions == {} and account.by_symbol == {}


def test_partial_close_takes_its_share_of_the_opening_commission():
    account = Account(100_000.0)
    account.open(position(side="SELL", units=100_000, entry=1.1000, commission=4.0))
    account.mark("EURUSD", 1.0978, 1.0980)
    pnl = account.close("ord-1", 25_000, 1.0980, 1.0)
    assert pnl == pytest.approx(25_000 * 0.0020 - 1.0 - 1.0)
    left = account.positions["ord-1"]
    assert (left.units, left.commission) == (75_000, pytest.approx(3.0))
    assert account.unrealized_pnl == pytest.approx(75_000 * 0.0020)  # re-marked after the close
    assert account.equity == pytest.approx(100_000 - 4.0 + 50.0 - 1.0 + 150.0)


def test_drawdown_is_measured_from_the_peak_and_reset_on_request():
    account = Account(100_000.0)
    account.open(position(commission=0.0))
    account.mark("EURUSD", 1.1100, 1.1102)  # +1000: peak 101,000
    account.mark("EURUSD", 1.0998, 1.1000)  # -20
    assert account.peak_equity == pytest.approx(101_000)
    assert account.drawdown == pytest.approx(1_020 / 101_000)
    account.reset_peak()
    assert account.drawdown == 0.0


def test_the_day_starts_with_the_equity_at_midnight():
    account = Account(100_000.0)
    account.open(position(commission=0.0))
    account.roll_day(T0)
    account.mark("EURUSD", 1.0950, 1.0952)  # -500 during the 5th
    account.roll_day(T0 + timedelta(hours=5))  # same day: no change
    assert account.day_start_equity == 100_000
    account.roll_day(datetime(2014, 5, 6, 0, 0, 1, tzinfo=UTC))
    assert account.day_start_equity == pytest.approx(99_500)
    assert account.next_day == datetime(2014, 5, 7, tzinfo=UTC)


@pytest.mark.parametrize(("side", "bid", "ask", "at", "expected"), [
    ("BUY", 1.0990, 1.0992, T0, "stop-loss"),
    ("BUY", 1.1030, 1.1032, T0, "take-profit"),
    ("BUY", 1.1000, 1.1002, T0 + timedelta(minutes=5), "horizon"),
    ("BUY", 1.1000, 1.1002, T0 + timedelta(minutes=4, seconds=59), None),
    ("SELL", 1.1006, 1.1010, T0, "stop-loss"),  # a short stops at the ask
    ("SELL", 1.0968, 1.0970, T0, "take-profit"),
    ("SELL", 1.1008, 1.1009, T0, None),
])
def test_exits_in_order_stop_take_profit_horizon(side, bid, ask, at, expected):
    if side == "BUY":
        p = position(side="BUY", stop_loss=1.0990, take_profit=1.1030, exit_at=T0 + timedelta(minutes=5))
    else:
        p = position(side="SELL", stop_loss=1.1010, take_profit=1.0970, exit_at=T0 + timedelta(minutes=5))
    assert p.exit_reason(bid, ask, at) == expected


def test_stop_loss_wins_over_a_passed_horizon():
    p = position(stop_loss=1.0990, exit_at=T0)
    assert p.exit_reason(1.0980, 1.0982, T0 + timedelta(hours=1)) == "stop-loss"


def in_band(band: QuietBand, bid: float, ask: float, at: datetime) -> bool:
    return band.bid_above < bid < band.bid_below and band.ask_above < ask < band.ask_below and at < band.until


def test_the_quiet_band_is_exactly_where_no_position_exits():
    # two longs and two shorts on one symbol (a band is per symbol, sides mixed on purpose)
    positions = [
        position("L1", "BUY", stop_loss=1.0990, take_profit=1.1030, exit_at=T0 + timedelta(minutes=5)),
        position("L2", "BUY", stop_loss=1.0985, exit_at=T0 + timedelta(minutes=3)),
        position("S1", "SELL", stop_loss=1.1012, take_profit=1.0970),
        position("S2", "SELL", stop_loss=1.1015, take_profit=1.0975),
    ]
    band = QuietBand.of(positions)
    assert band == QuietBand(bid_above=1.0990, bid_below=1.1030, ask_above=1.0975, ask_below=1.1012,
                             until=T0 + timedelta(minutes=3))
    quotes = [1.0970, 1.0975, 1.0980, 1.0985, 1.0990, 1.0995, 1.1000, 1.1012, 1.1015, 1.1030, 1.1035, math.nan]
    times = [T0, T0 + timedelta(minutes=3) - timedelta(microseconds=1), T0 + timedelta(minutes=3)]
    for bid, ask, at in itertools.product(quotes, quotes, times):
        no_exit = all(p.exit_reason(bid, ask, at) is None for p in positions)
        # inside the band nothing exits; outside it (NaN aside: compared false, no exit) something does
        assert in_band(band, bid, ask, at) == (no_exit and not math.isnan(bid) and not math.isnan(ask)), (bid, ask, at)


def test_the_band_follows_opens_closes_and_restores():
    account = Account(100_000.0)
    assert account.quiet == {}
    account.open(position("L1", stop_loss=1.0990))
    assert account.quiet["EURUSD"] == QuietBand(1.0990, math.inf, -math.inf, math.inf, NEVER)
    account.open(position("L2", stop_loss=1.0995, exit_at=T0 + timedelta(minutes=5)))
    assert account.quiet["EURUSD"][0] == 1.0995 and account.quiet["EURUSD"].until == T0 + timedelta(minutes=5)
    account.close("L2", 100_000.0, 1.1000, 0.0)
    assert account.quiet["EURUSD"] == QuietBand(1.0990, math.inf, -math.inf, math.inf, NEVER)
    restored = Account.from_snapshot(msgspec.json.decode(msgspec.json.encode(account.snapshot())))
    assert restored.quiet == account.quiet
    account.close("L1", 100_000.0, 1.1000, 0.0)
    assert account.quiet == {} and account.by_symbol == {}


def test_snapshot_survives_json_and_restores_the_same_account():
    account = Account(100_000.0)
    account.open(position(stop_loss=1.0990, exit_at=T0 + timedelta(minutes=6)))
    account.roll_day(T0)
    account.mark("EURUSD", 1.1010, 1.1012)
    restored = Account.from_snapshot(msgspec.json.decode(msgspec.json.encode(account.snapshot())))
    assert restored.snapshot() == account.snapshot()
    assert restored.positions == account.positions
    assert restored.by_symbol["EURUSD"][0] is restored.positions["ord-1"]
    assert (restored.equity, restored.drawdown) == (account.equity, account.drawdown)
