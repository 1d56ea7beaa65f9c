"""Read endpoints over the projections built from four hours of real EMA-cross trading: the
values are the read store's and the audit log's, 404 names what is unknown, 422 a bad
parameter, 503 a missing analytics store."""

from __future__ import annotations

import msgspec
import pytest
from gateway_kit import api_settings, gateway

from tradepipe.read.model import OrderView, PositionView, PriceView


def test_prices_positions_portfolio_trades_and_orders_are_the_projections(traded, reader):
    _, _, store, _ = traded
    assert reader.get("/api/v1/prices").json() == msgspec.to_builtins(store.prices())
    eurusd = msgspec.convert(reader.get("/api/v1/prices/EURUSD").json(), PriceView)
    assert eurusd == store.price("EURUSD")
    open_positions = [msgspec.convert(p, PositionView) for p in reader.get("/api/v1/positions").json()]
    assert open_positions and all(p.status == "OPEN" for p in open_positions)
    closed = reader.get("/api/v1/positions?status=closed").json()
    assert len(closed) == 11 and all(p["status"] == "CLOSED" and p["pnl"] is not None for p in closed)
    assert len(reader.get("/api/v1/positions?status=all").json()) == len(open_positions) + len(closed)
    portfolio = reader.get("/api/v1/portfolio").json()
    assert portfolio["trades"] == 24 and portfolio["closedPositions"] == 11
    assert portfolio["equity"] == pytest.approx(portfolio["initialEquity"] + portfolio["realizedPnl"]
                                                + portfolio["unrealizedPnl"])
    trades = reader.get("/api/v1/trades?symbol=EURUSD&limit=3").json()
    assert len(trades) == 3 and {t["symbol"] for t in trades} == {"EURUSD"}
    orders = reader.get("/api/v1/orders").json()
    assert len(orders) == 24
    one = msgspec.convert(reader.get(f"/api/v1/orders/{orders[0]['orderId']}").json(), OrderView)
    assert one == store.order(orders[0]["orderId"])
    assert reader.get("/api/v1/performance").json()["metrics"]["win_rate"] is not None


def test_explain_tells_why_an_order_was_placed(reader):
    entry = next(o for o in reader.get("/api/v1/orders?limit=1000").json() if o["reason"] == "signal")
    explained = reader.get(f"/api/v1/orders/{entry['orderId']}/explain").json()
    assert explained["order_id"] == entry["orderId"]
    assert explained["tick"]["symbol"] == entry["symbol"] and explained["bar"]["timeframe"] == "1m"
    assert explained["signal"]["direction"] == entry["side"]
    assert [e["type"] for e in explained["events"]][:2] == ["OrderPlaced", "OrderExecuted"]


def test_analytics_endpoints(reader):
    candles = reader.get("/api/v1/analytics/ohlc?symbol=EURUSD&timeframe=1h").json()
    assert len(candles) == 4 and all(c["low"] <= c["open"] <= c["high"] for c in candles)
    window = reader.get("/api/v1/analytics/ohlc", params={"symbol": "EURUSD", "timeframe": "15m",
                                                          "start": "2014-05-05T01:00:00Z", "end": "2014-05-05T02:00:00Z"})
    assert [c["time"] for c in window.json()] == [f"2014-05-05T01:{m:02d}:00Z" for m in (0, 15, 30, 45)]
    days = reader.get("/api/v1/analytics/pnl-by-day").json()
    assert [(d["day"], d["positionsClosed"]) for d in days] == [("2014-05-05", 11)]
    assert reader.get("/api/v1/analytics/hit-rate").json() == []  # the EMA cross makes no predictions
    assert reader.get("/api/v1/predictions").json() == []


@pytest.mark.parametrize(("path", "status", "detail"), [
    ("/api/v1/prices/XXXYYY", 404, "no price for symbol 'XXXYYY'"),
    ("/api/v1/orders/ord-0000", 404, "no order 'ord-0000'"),
    ("/api/v1/orders/ord-0000/explain", 404, "no order 'ord-0000' in the audit log"),
    ("/api/v1/analytics/ohlc?symbol=EURUSD&timeframe=1m&start=2014-05-05T02:00:00Z&end=2014-05-05T01:00:00Z",
     422, "must be before end"),
    ("/api/v1/analytics/ohlc?symbol=EURUSD&end=0999-01-01T00:00:00Z", 422, "end (0999-01-01T00:00:00+00:00) must be within the years 1900..2299"),
])
def test_unknown_things_are_404_and_bad_ranges_422(reader, path, status, detail):
    answer = reader.get(path)
    assert answer.status_code == status and detail in answer.json()["detail"]


@pytest.mark.parametrize(("path", "field"), [
    ("/api/v1/positions?status=sometimes", "status"),
    ("/api/v1/trades?limit=0", "limit"),
    ("/api/v1/orders?limit=5000", "limit"),
    ("/api/v1/analytics/ohlc?symbol=EURUSD&timeframe=5x", "timeframe"),
    ("/api/v1/analytics/ohlc?timeframe=1m", "symbol"),
    ("/api/v1/prices/EUR%20USD", "symbol"),
])
def test_malformed_parameters_are_422_naming_them(reader, path, field):
    answer = reader.get(path)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == field


def test_analytics_without_a_store_is_503(tmp_path, bus, store):
    with gateway(api_settings(tmp_path), bus, store) as client:
        answer = client.get("/api/v1/analytics/pnl-by-day")
        assert answer.status_code == 503 and "--analytics" in answer.json()["detail"]
        assert client.get("/api/v1/performance").status_code == 404  # nothing projected yet
