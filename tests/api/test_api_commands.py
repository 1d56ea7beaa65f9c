"""Commands as events: each POST is an APIRequestReceived answered by the real command handler
with an APIResponseReady of the same correlationId; ?sync=true returns that answer (504 when
none comes in time), otherwise 202 and a status endpoint. The domain events reach the real
trading engine: a manual order is placed (or rejected, saying why), halt halts."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from gateway_kit import AUTH, Collected, api_settings, gateway, running
from infra import wait_until

from tradepipe.config import Settings
from tradepipe.events.types import (
    APIRequestReceived, APIResponseReady, ConfigurationUpdated, MarketDataReceived, OrderExecuted, OrderPlaced,
    OrderRejected, ReplayRequested, TickData, TradingCommand, TradingStateChanged,
)
from tradepipe.runtime.clock import WallClock
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import EventStore
from tradepipe.runtime.tail import BusTail
from tradepipe.services.api_commands import ApiCommandHandler
from tradepipe.services.trading_engine import TradingEngine

UTC = timezone.utc


@pytest.fixture
def settings(tmp_path) -> Settings:
    return api_settings(tmp_path, sync_timeout_s=5.0)


@pytest.fixture
def handled(settings, bus, store):
    """The gateway with the command handler consuming api-requests, and every event seen."""
    with BusTail(bus) as tail, running(ApiCommandHandler(settings), bus), gateway(settings, bus, store) as client:
        yield client, Collected(tail)


def test_a_sync_command_returns_the_handlers_answer_with_one_correlation(handled):
    client, seen = handled
    answer = client.post("/api/v1/trading/halt?sync=true", json={"reason": "maintenance"}, headers=AUTH)
    assert answer.status_code == 200
    body = answer.json()
    assert body["command"] == "halt" and [p["type"] for p in body["published"]] == ["TradingCommand"]
    request_id = answer.headers["X-Request-Id"]
    correlation = uuid.UUID(request_id)
    request = wait_until(lambda: seen.of(APIRequestReceived, request_id=request_id))[0]
    assert request.correlation_id == request.event_id == correlation and request.sync is True
    command = wait_until(lambda: seen.of(TradingCommand, correlation_id=correlation))[0]
    assert (command.command, command.reason, str(command.event_id)) == ("halt", "maintenance", body["published"][0]["eventId"])
    response = seen.of(APIResponseReady, request_id=request_id)[0]
    assert response.correlation_id == correlation and response.status == 200


def test_configuration_changes_are_validated_like_the_services_apply_them(handled):
    client, seen = handled

    def configure(changes):
        return client.post("/api/v1/config?sync=true", json={"changes": changes}, headers=AUTH)

    applied = configure({"validator.min_confidence": 0.4, "trading.max_daily_loss": 0.01})
    assert applied.status_code == 200
    update = wait_until(lambda: seen.of(ConfigurationUpdated))[0]
    assert update.changes == {"validator.min_confidence": 0.4, "trading.max_daily_loss": 0.01}
    refused = {
        "validator.min_confidence": (2, "validator.min_confidence: Input should be less than or equal to 1"),
        "validator.no_such_rule": (1, "validator.no_such_rule: Extra inputs are not permitted"),
        "bus.url": ("memory://", "bus.url: not a live setting"),
        "trading.initial_equity": (5.0, "trading.initial_equity: cannot change while the account is running"),
    }
    for key, (value, message) in refused.items():
        answer = configure({key: value})
        assert answer.status_code == 422 and message in answer.json()["detail"], answer.json()
    assert len(seen.of(ConfigurationUpdated)) == 1  # nothing refused was published


def test_without_a_handler_a_sync_command_times_out_with_504(tmp_path, bus, store):
    with gateway(api_settings(tmp_path, sync_timeout_s=0.3), bus, store) as client:
        answer = client.post("/api/v1/trading/resume?sync=true", headers=AUTH)
        assert answer.status_code == 504
        body = answer.json()
        assert "no answer to request" in body["detail"] and "0.3 s" in body["detail"]
        status = client.get(body["statusUrl"], headers=AUTH).json()
        assert status["status"] == "pending" and status["response"] is None


def test_an_async_command_is_accepted_then_its_status_shows_the_answer(handled):
    client, _ = handled
    accepted = client.post("/api/v1/replay", json={"target": "projections"}, headers=AUTH)
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["statusUrl"] == f"/api/v1/requests/{body['requestId']}" == accepted.headers["Location"]
    done = wait_until(lambda: (s := client.get(body["statusUrl"], headers=AUTH).json())["status"] == "done" and s)
    assert done["response"]["status"] == 200
    assert done["response"]["body"]["command"] == "replay" and done["response"]["body"]["target"] == "projections"
    assert client.get("/api/v1/requests/01a2-unknown", headers=AUTH).status_code == 404


@pytest.mark.parametrize(("body", "problem"), [
    ({"side": "BUY"}, ("body", "symbol")),
    ({"symbol": "EUR USD", "side": "BUY"}, ("body", "symbol")),
    ({"symbol": "EURUSD", "side": "HOLD"}, ("body", "side")),
    ({"symbol": "EURUSD", "side": "BUY", "volume": -5}, ("body", "volume")),
    ({"symbol": "EURUSD", "side": "BUY", "price": 1.1}, ("body", "price")),
])
def test_malformed_bodies_are_422_naming_the_field(handled, body, problem):
    client, seen = handled
    answer = client.post("/api/v1/orders?sync=true", json=body, headers=AUTH)
    assert answer.status_code == 422
    assert [tuple(d["loc"]) for d in answer.json()["detail"]] == [problem]
    assert not seen.of(APIRequestReceived)  # refused before anything was published


def test_a_body_that_is_not_json_is_422(handled):
    client, _ = handled
    answer = client.post("/api/v1/config", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "json_invalid"


def test_the_handler_answers_what_it_cannot_serve(settings):
    """Anything on the bus can publish requests: the handler re-validates and always answers."""
    handler, ctx = ApiCommandHandler(settings), Context("test", WallClock())

    def answer(path, body):
        request_id = uuid.uuid4()
        request = APIRequestReceived(event_id=request_id, timestamp=datetime.now(UTC), correlation_id=request_id,
                                     request_id=str(request_id), method="POST", path=path, body=body)
        ctx.begin(request)
        *published, response = handler.handle(request, ctx)
        assert response.request_id == str(request_id) and response.correlation_id == request_id
        return published, response

    published, response = answer("/api/v1/orders", {"symbol": "EURUSD"})
    assert (published, response.status) == ([], 422) and tuple(response.body["detail"][0]["loc"]) == ("side",)
    published, response = answer("/api/v1/nothing", {})
    assert response.status == 404 and "POST /api/v1/config" in response.body["detail"]
    published, response = answer("/api/v1/replay", None)
    assert response.status == 200 and type(published[0]) is ReplayRequested and published[0].target == "all"


def tick(symbol: str, bid: float, ask: float) -> MarketDataReceived:
    now = datetime.now(UTC)
    return MarketDataReceived(event_id=uuid.uuid4(), timestamp=now, symbol=symbol, source="test",
                              data=TickData(bid=bid, ask=ask, timestamp=now))


def test_manual_orders_reach_the_trading_engine(settings, bus, store):
    with BusTail(bus) as tail, running(ApiCommandHandler(settings), bus), \
            running(TradingEngine(settings.trading), bus), gateway(settings, bus, store) as client:
        seen = Collected(tail)
        EventStore(bus).append([tick("EURUSD", 1.10000, 1.10002)])

        def order(**body):
            answer = client.post("/api/v1/orders?sync=true", json=body, headers=AUTH)
            assert answer.status_code == 200, answer.json()
            return answer.json()["orderId"]

        bought = order(symbol="EURUSD", side="BUY", volume=20_000, reason="hedge")
        placed = wait_until(lambda: seen.of(OrderPlaced, order_id=bought))[0]
        assert (placed.symbol, placed.side, placed.volume, placed.reason) == ("EURUSD", "BUY", 20_000, "manual")
        assert placed.price == 1.10002 and placed.stop_loss < placed.price  # at the ask, with the default stop
        filled = wait_until(lambda: seen.of(OrderExecuted, order_id=bought))[0]
        assert filled.position_id == bought and filled.volume == 20_000

        unpriced = order(symbol="GBPUSD", side="SELL")
        assert wait_until(lambda: seen.of(OrderRejected, order_id=unpriced))[0].reason == "risk: no market price for GBPUSD yet"
        too_big = order(symbol="EURUSD", side="BUY", volume=10_000_000)
        assert "trading.max_order_units" in wait_until(lambda: seen.of(OrderRejected, order_id=too_big))[0].reason

        assert client.post("/api/v1/trading/halt?sync=true", json={"reason": "drill"}, headers=AUTH).status_code == 200
        halted = wait_until(lambda: seen.of(TradingStateChanged, state="HALTED"))[0]
        assert halted.reason == "manual halt: drill"
        refused = order(symbol="EURUSD", side="SELL")
        assert wait_until(lambda: seen.of(OrderRejected, order_id=refused))[0].reason.startswith("risk: trading halted")
        assert not seen.of(OrderPlaced, order_id=refused)
