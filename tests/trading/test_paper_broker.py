"""The paper broker fills at the ask (buy) / bid (sell) plus slippage, with commission per
million of notional, deterministically."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tradepipe.trading.brokers import Fill, OrderRequest, PaperBroker, Quote

QUOTE = Quote(bid=1.10000, ask=1.10020, time=datetime(2014, 5, 5, 10, tzinfo=timezone.utc))


def order(side: str, units: float = 100_000) -> OrderRequest:
    return OrderRequest(order_id="ord-1", symbol="EURUSD", side=side, units=units)


def test_buy_fills_at_the_ask_plus_slippage_with_commission():
    fill = PaperBroker(slippage_bps=0.5, commission_per_million=30).submit(order("BUY"), QUOTE)
    price = 1.10020 + 1.10020 * 0.5e-4
    assert fill == Fill(order_id="ord-1", price=pytest.approx(price), units=100_000,
                        commission=pytest.approx(100_000 * price * 30 / 1e6), slippage=pytest.approx(1.10020 * 0.5e-4))
    assert fill.price == pytest.approx(1.10025501)


def test_sell_fills_at_the_bid_minus_slippage():
    fill = PaperBroker(slippage_bps=0.5, commission_per_million=30).submit(order("SELL", 250_000), QUOTE)
    assert fill.price == pytest.approx(1.10000 - 1.10000 * 0.5e-4)
    assert fill.slippage == pytest.approx(1.1 * 0.5e-4)
    assert fill.commission == pytest.approx(250_000 * fill.price * 30e-6)


def test_without_slippage_or_commission_fills_at_the_quote_exactly():
    broker = PaperBroker()
    assert broker.submit(order("BUY"), QUOTE).price == 1.10020
    assert broker.submit(order("SELL"), QUOTE).price == 1.10000
    assert broker.submit(order("SELL"), QUOTE).commission == 0.0


def test_deterministic_and_nothing_pending_to_cancel():
    broker = PaperBroker(slippage_bps=0.1, commission_per_million=30)
    assert broker.submit(order("BUY"), QUOTE) == broker.submit(order("BUY"), QUOTE)
    assert broker.cancel("ord-1") is False
    assert broker.name == "paper"
