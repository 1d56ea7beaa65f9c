"""Sizing (fixed and risk-based, rounded down to the lot step; the default stop) and each
pre-trade refusal with its reason."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tradepipe.config import TradingSettings
from tradepipe.trading.account import Account, Position
from tradepipe.trading.risk import order_units, profit_target, protective_stop, refusal

T0 = datetime(2014, 5, 5, 10, 0, tzinfo=timezone.utc)


def open_position(account: Account, position_id: str, symbol: str, side: str, units: float, entry: float) -> None:
    account.open(Position(position_id=position_id, symbol=symbol, side=side, units=units, entry_price=entry,
                          opened_at=T0))


def test_fixed_sizing_rounds_down_to_the_lot_step():
    settings = TradingSettings(sizing="fixed", fixed_units=12_345, lot_step=1_000)
    assert order_units(settings, 100_000, 1.1000, 1.0990) == 12_000


@pytest.mark.parametrize(("entry", "stop", "units"), [
    (1.1000, 1.0990, 250_000),  # 250 / 0.0010: exactly on a lot despite float division
    (1.1000, 1.0993, 357_000),  # 250 / 0.0007 = 357,142.9 -> down
    (1.1000, 1.1007, 357_000),  # a short's stop is above
])
def test_risk_sizing_loses_risk_per_trade_of_equity_at_the_stop(entry, stop, units):
    settings = TradingSettings(sizing="risk", risk_per_trade=0.0025, lot_step=1_000, max_order_units=1_000_000)
    assert order_units(settings, 100_000, entry, stop) == units


def test_missing_or_wrong_side_stop_defaults_to_default_stop_bps():
    assert protective_stop("BUY", 1.1000, None, 10) == pytest.approx(1.0989)
    assert protective_stop("SELL", 1.1000, None, 10) == pytest.approx(1.1011)
    assert protective_stop("BUY", 1.1000, 1.1005, 10) == pytest.approx(1.0989)  # above a long's entry
    assert protective_stop("BUY", 1.1000, 1.0980, 10) == 1.0980
    settings = TradingSettings(sizing="risk", risk_per_trade=0.0025, default_stop_bps=10, max_order_units=1_000_000)
    assert order_units(settings, 100_000, 1.1000, protective_stop("BUY", 1.1000, None, 10)) == 227_000


def test_profit_target_only_on_the_winning_side():
    assert profit_target("BUY", 1.1000, 1.1020) == 1.1020
    assert profit_target("BUY", 1.1000, 1.0990) is None
    assert profit_target("SELL", 1.1000, 1.0980) == 1.0980
    assert profit_target("SELL", 1.1000, None) is None


SETTINGS = TradingSettings(max_position_units=300_000, max_gross_exposure=1_000_000, max_daily_loss=0.02,
                           lot_step=1_000)


def test_an_order_within_every_limit_passes():
    account = Account(100_000)
    assert refusal(SETTINGS, account, "EURUSD", "BUY", 100_000, 1.1000) is None


def test_halted_refuses_first():
    account = Account(100_000)
    assert refusal(SETTINGS, account, "EURUSD", "BUY", 0, 1.1, halted="manual halt: maintenance") == (
        "trading halted (manual halt: maintenance)")


def test_daily_loss_limit():
    account = Account(100_000)
    account.realized_pnl = -2_000.0  # equity 98,000 = the floor
    assert refusal(SETTINGS, account, "EURUSD", "BUY", 10_000, 1.1) == (
        "daily loss limit reached: equity 98,000.00 is at or below 98,000.00 "
        "(2.00% under the day's start 100,000.00)")
    account.realized_pnl = -1_999.0
    assert refusal(SETTINGS, account, "EURUSD", "BUY", 10_000, 1.1) is None


def test_size_below_one_lot_step():
    assert refusal(SETTINGS, Account(100_000), "EURUSD", "BUY", 0, 1.1) == (
        "order size 0 units on EURUSD is below one lot step of 1,000 units")


def test_max_position_per_symbol_counts_the_same_side():
    account = Account(100_000)
    open_position(account, "a", "EURUSD", "BUY", 295_000, 1.1)
    assert refusal(SETTINGS, account, "EURUSD", "BUY", 12_000, 1.1) == (
        "max position 300,000 units on EURUSD: open 295,000 + order 12,000")
    assert refusal(SETTINGS, account, "EURUSD", "BUY", 5_000, 1.1) is None
    assert refusal(SETTINGS, account, "NZDUSD", "BUY", 12_000, 0.86) is None


def test_max_gross_exposure_leaves_out_what_a_reversal_closes():
    account = Account(100_000)
    open_position(account, "a", "EURUSD", "BUY", 300_000, 1.1000)
    open_position(account, "b", "NZDUSD", "SELL", 300_000, 0.8600)
    account.mark("EURUSD", 1.1000, 1.1002)
    account.mark("NZDUSD", 0.8598, 0.8600)
    # open 330,000 + 258,000 = 588,000; a GBPUSD-like order of 300,000 at 1.5 breaks 1M
    assert refusal(SETTINGS, account, "GBPUSD", "BUY", 300_000, 1.5) == (
        "max gross exposure 1,000,000: open 588,000 + order 450,000 (300,000 GBPUSD at 1.50000)")
    # selling EURUSD first closes the 330,000 long
    assert refusal(SETTINGS, account, "EURUSD", "SELL", 300_000, 1.1000) is None
