"""The live dashboard (R8.5): the feed folds real pipeline events into its bounded state and
hands clients snapshots and coalesced updates; in Debian's headless Chromium the page loads
without console errors or failed requests and shows a fill of a run published while it is
open; a client that goes away (a closed tab, a stalled reader) is cleaned up on the server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from infra import wait_until

from tradepipe.bus import open_bus
from tradepipe.config import Settings
from tradepipe.events import ORDERS, PERFORMANCE, MARKET_DATA
from tradepipe.events.envelope import new_event_id
from tradepipe.events.types import (
    AlertRaised, AlertResolved, BarClosed, CircuitBreakerStateChanged, MarketDataReceived, OrderExecuted, OrderPlaced,
    PerformanceCalculated, PositionClosed, TickData,
)
from tradepipe.ops.dashboard import DashboardFeed, dashboard_router
from tradepipe.pipeline import RunRequest, run_pipeline
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.store import EventStore
from tradepipe.runtime.tail import BusTail
from tradepipe.sources import sample_paths

UTC = timezone.utc
REPO = Path(__file__).resolve().parents[2]
MORNING = (datetime(2014, 5, 5, 0, 0, tzinfo=UTC), datetime(2014, 5, 5, 8, 0, tzinfo=UTC))
MONDAY = (datetime(2014, 5, 5, tzinfo=UTC), datetime(2014, 5, 6, tzinfo=UTC))
TUESDAY_MORNING = (datetime(2014, 5, 6, 0, 0, tzinfo=UTC), datetime(2014, 5, 6, 8, 0, tzinfo=UTC))
SMALL_SEND_BUFFER = 4096
SMALL_SEND_BUFFER_HOLDS = 90_000  # bytes a server with it and a 4 kB client window hold unread (measured ~86 kB)
CHROMIUM = "/usr/bin/chromium"


def run_ema_cross(bus, window=MORNING) -> dict:
    return run_pipeline(RunRequest(paths=sample_paths(), settings=Settings(), strategy="ema-cross",
                                   start=window[0], end=window[1]), bus)


def of(events, cls):
    return [e for e in events if type(e) is cls]


def price_text(value: float) -> str:
    """A price as the page writes it (5 decimals below 100)."""
    return f"{value:.5f}"


# --- the feed on a real run ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def morning():
    """A real ema-cross run's events, and a feed that followed them through a BusTail."""
    bus = open_bus("memory://")
    run_ema_cross(bus)
    store = EventStore(bus)
    events = {topic: [s.event for s in store.replay(topic)] for topic in (MARKET_DATA, ORDERS, PERFORMANCE)}
    total = sum(sum(bus.end_offsets(t).values()) for t in bus.topics())
    tail = BusTail(bus, from_start=True)
    feed = DashboardFeed(tail)
    with tail:
        wait_until(lambda: tail.seen == total, timeout_s=30, what="the tail to hand over the whole run")
    yield feed, events
    bus.close()


def test_a_snapshot_holds_the_runs_prices_fills_positions_and_equity(morning):
    feed, events = morning
    snapshot = feed.snapshot()
    bars = [b for b in of(events[MARKET_DATA], BarClosed) if b.timeframe == "1m"]
    for symbol in {b.symbol for b in bars}:
        mine = [b for b in bars if b.symbol == symbol]
        assert snapshot["prices"][symbol] == [[b.timestamp_ms, b.mid.close] for b in mine]
    fills = of(events[ORDERS], OrderExecuted)
    assert [f["orderId"] for f in snapshot["fills"]] == [f.order_id for f in fills]
    assert snapshot["fills"][-1]["price"] == fills[-1].price
    opened = {f.order_id for f in fills if f.position_id == f.order_id}
    closed = of(events[ORDERS], PositionClosed)
    assert {p["positionId"] for p in snapshot["positions"]} == opened - {c.position_id for c in closed}
    assert [(c["positionId"], c["pnl"]) for c in snapshot["closed"]] == [(c.position_id, c.pnl) for c in closed]
    performance = of(events[PERFORMANCE], PerformanceCalculated)
    assert [point[1] for point in snapshot["equity"]] == [p.equity for p in performance]
    peak = max(p.equity for p in performance)
    assert min(point[2] for point in snapshot["equity"]) == 0.0
    assert snapshot["equity"][-1][2] == pytest.approx(1 - performance[-1].equity / peak, abs=1e-6)
    assert snapshot["counts"]["events"] == sum(snapshot["counts"]["byTopic"].values())
    assert set(snapshot["quotes"]) == {b.symbol for b in bars}


def test_a_feed_started_late_begins_from_what_the_projections_know(tmp_path):
    from tradepipe.read.projections import open_read_store, rebuild

    bus = open_bus("memory://")
    run_ema_cross(bus)
    with contextlib.closing(open_read_store(f"sqlite:///{tmp_path / 'read.db'}")) as store:
        rebuild(bus, store)
        snapshot = DashboardFeed(read_model=store).snapshot()
        assert {p["positionId"] for p in snapshot["positions"]} == {p.position_id for p in store.positions()}
        trades = sorted(store.trades(limit=200), key=lambda t: t.executed_at)
        assert [f["orderId"] for f in snapshot["fills"]] == [t.order_id for t in trades]
        assert snapshot["equity"][-1][1] == store.performance().equity
        assert snapshot["trading"]["state"] == store.portfolio().trading_state
    bus.close()


def at(minutes: int) -> datetime:
    return MORNING[0] + timedelta(minutes=minutes)


def tick(symbol="EURUSD", minutes=0, bid=1.3870):
    moment = at(minutes)
    return MarketDataReceived(event_id=new_event_id(), timestamp=moment, symbol=symbol, source="test",
                              data=TickData(bid=bid, ask=bid + 0.0001, timestamp=moment))


def fill(order_id, minutes, price=1.38705, position_id=None, side="BUY"):
    return OrderExecuted(event_id=new_event_id(), timestamp=at(minutes), symbol="EURUSD", order_id=order_id,
                         side=side, volume=100_000.0, price=price, position_id=position_id or order_id)


def test_updates_carry_only_what_changed_after_the_cursor():
    feed = DashboardFeed()
    feed.on_event(fill("ord-1", 1))
    cursor = feed.snapshot()["seq"]
    assert feed.changes_since(cursor) is None
    feed.on_event(fill("ord-2", 2))
    feed.on_event(CircuitBreakerStateChanged(event_id=new_event_id(), timestamp=at(3), breaker="ml-xgboost",
                                             from_state="CLOSED", to_state="OPEN", failures=5, reason="timeouts"))
    kind, update = feed.changes_since(cursor)
    assert kind == "update" and update["seq"] > cursor
    assert [f["orderId"] for f in update["fills"]] == ["ord-2"]
    assert update["breakers"]["ml-xgboost"]["state"] == "OPEN" and update["breakers"]["ml-xgboost"]["failures"] == 5
    assert [p["positionId"] for p in update["positions"]] == ["ord-1", "ord-2"]  # a changed section goes whole
    assert "equity" not in update and "prices" not in update


def test_a_client_that_fell_behind_the_kept_items_gets_a_fresh_snapshot():
    feed = DashboardFeed(limits={"fills": 3})
    feed.on_event(fill("ord-0", 0))
    cursor = feed.snapshot()["seq"]
    for n in range(1, 5):
        feed.on_event(fill(f"ord-{n}", n))
    kind, message = feed.changes_since(cursor)
    assert kind == "snapshot" and [f["orderId"] for f in message["fills"]] == ["ord-2", "ord-3", "ord-4"]


def test_positions_close_alerts_resolve_and_latency_is_timed_from_the_tick():
    feed = DashboardFeed()
    first = tick()
    feed.on_event(first)
    feed.on_event(OrderPlaced(event_id=new_event_id(), timestamp=at(0), symbol="EURUSD", correlation_id=first.event_id,
                              order_id="ord-1", side="BUY", volume=100_000.0, position_id="ord-1"))
    feed.on_event(fill("ord-1", 0))
    feed.on_event(PositionClosed(event_id=new_event_id(), timestamp=at(9), symbol="EURUSD", position_id="ord-1",
                                 side="BUY", volume=100_000.0, entry_price=1.38705, exit_price=1.38805, pnl=97.5,
                                 reason="take-profit", order_id="ord-2"))
    raised = dict(rule="consumer_lag", subject="trading-engine/order-events/0")
    feed.on_event(AlertRaised(event_id=new_event_id(), timestamp=at(10), severity="warning", message="lag 1500 > 1000",
                              value=1500.0, threshold=1000.0, **raised))
    assert [a["rule"] for a in feed.snapshot()["alerts"]] == ["consumer_lag"]
    feed.on_event(AlertResolved(event_id=new_event_id(), timestamp=at(11), value=20.0, **raised))
    snapshot = feed.snapshot()
    assert snapshot["positions"] == [] and snapshot["closed"][0]["pnl"] == 97.5
    assert snapshot["alerts"] == [] and [a["resolved"] for a in snapshot["alertLog"]] == [False, True]
    assert snapshot["alertLog"][1]["severity"] == "warning"
    assert snapshot["latencyStats"]["samples"] == 1 and snapshot["latencyStats"]["p50"] >= 0
    assert snapshot["quotes"]["EURUSD"]["bid"] == 1.3870


def test_lag_comes_from_the_provider_and_its_failure_is_shown_not_raised():
    answers = iter([{("trading-engine", "order-events", 0): 12}, ConnectionError("bus away")])

    def lag():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer
    feed = DashboardFeed(lag=lag)
    feed.refresh_lag()
    assert feed.snapshot()["lag"] == {"trading-engine/order-events/0": 12}
    feed.refresh_lag()  # within the second: not asked again
    assert feed.snapshot()["lag"] == {"trading-engine/order-events/0": 12}
    feed._lag_due = 0.0
    feed.refresh_lag()
    assert feed.snapshot()["lag"] == {"error": "bus away"}


# --- a real server, a real browser -------------------------------------------------------------

@contextlib.contextmanager
def serve(app: FastAPI, send_buffer: int | None = None):
    """uvicorn on a free port in a thread; yields the base URL. Accepted connections inherit
    ``send_buffer`` (SO_SNDBUF) from the listening socket."""
    sock = socket.socket()
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=10, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def live(request, tmp_path):
    """A SQLite bus with the pipeline's topics, a tail from its end, the dashboard served
    (with ``request.param`` as the server sockets' send buffer if given)."""
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}", create=True)
    ensure_topics(bus)
    tail = BusTail(bus)
    feed = DashboardFeed(tail)
    app = FastAPI()
    app.include_router(dashboard_router(feed))
    with tail, serve(app, send_buffer=getattr(request, "param", None)) as url:
        yield bus, feed, url
        feed.close()  # ends the streams, so the server stops at once
    bus.close()


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        message = "Debian's chromium is not installed (apt-get install chromium): the dashboard's browser test needs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def artifacts() -> Path:
    directory = Path(os.environ.get("TRADEPIPE_TEST_ARTIFACTS") or REPO / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Watched:
    """A page with its console errors, uncaught exceptions and failed requests recorded."""

    def __init__(self, browser, url: str) -> None:
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        self.page.goto(url + "/dashboard")
        self.page.locator("#conn.on").wait_for(timeout=10_000)


@pytest.mark.slow
def test_the_page_shows_a_fill_of_a_run_published_while_it_is_open(live, chromium, artifacts):
    bus, feed, url = live
    watched = Watched(chromium, url)
    page = watched.page
    assert page.title() == "tradepipe · live" and page.locator("#fills-empty").is_visible()

    summary = run_ema_cross(bus)
    fills = of([s.event for s in EventStore(bus).replay(ORDERS)], OrderExecuted)
    assert summary["fills"] == len(fills) > 0
    last = fills[-1]
    row = page.locator(f'#fills tr[data-order-id="{last.order_id}"]')
    row.wait_for(timeout=10_000)
    assert price_text(last.price) in row.inner_text() and last.side in row.inner_text()
    # the same fill is a marker on its symbol's price chart, beside the line of closed bars
    page.locator("#symbols button", has_text=last.symbol).click()
    page.locator(f'#price-chart circle[data-order-id="{last.order_id}"]').wait_for(timeout=5_000)
    assert page.locator("#price-chart polyline.price").count() == 1
    assert page.locator("#fill-count").inner_text() == str(len(fills))
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
    assert watched.problems == []
    page.close()
    wait_until(lambda: feed.clients == 0, timeout_s=10, what="the closed page's stream to be cleaned up")


def chunked_lines(stream):
    """The lines of an HTTP/1.1 response's chunked body, read from a raw socket's file."""
    while stream.readline() not in (b"\r\n", b""):  # the status line and headers
        pass
    pending = b""
    while size := int(stream.readline().strip(), 16):
        pending += stream.read(size)
        stream.readline()
        *lines, pending = pending.split(b"\n")
        yield from (line.decode().removesuffix("\r") for line in lines)


def sse_messages(lines):
    """(event, data) of each message of a Server-Sent Events stream, from its lines."""
    kind, data = None, None
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
        elif line == "" and data is not None:
            yield kind, data
            kind, data = None, None


@pytest.mark.slow
@pytest.mark.parametrize("live", [SMALL_SEND_BUFFER], indirect=True)
def test_a_stalled_client_does_not_hold_the_feed_back_and_catches_up_at_once(live, chromium):
    bus, feed, url = live
    run_ema_cross(bus, MONDAY)
    snapshot_size = len(json.dumps(feed.snapshot()))
    # more than the server can buffer for a client that does not read (with the small send
    # buffer, about 80 kB: asyncio's high-water mark and the kernel's): its stream stalls
    assert snapshot_size > 1.5 * SMALL_SEND_BUFFER_HOLDS
    host, port = url.removeprefix("http://").split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a 4 kB window, and nothing read
    stalled.connect((host, int(port)))
    with stalled, stalled.makefile("rb") as stream:
        stalled.sendall(f"GET /dashboard/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        wait_until(lambda: feed.clients == 1, timeout_s=10, what="the stalled client to register")
        watched = Watched(chromium, url)
        wait_until(lambda: feed.clients == 2, timeout_s=10, what="the page to register")

        run_ema_cross(bus, TUESDAY_MORNING)
        end = {t: n for t in bus.topics() if (n := sum(bus.end_offsets(t).values()))}
        wait_until(lambda: feed.snapshot()["counts"]["byTopic"] == end, timeout_s=30,
                   what="the feed to take in both runs")
        last = of([s.event for s in EventStore(bus).replay(ORDERS)], OrderExecuted)[-1]
        watched.page.locator(f'#fills tr[data-order-id="{last.order_id}"]').wait_for(timeout=10_000)
        assert watched.problems == []

        # the stalled client reads at last: its old snapshot, at most one update made before
        # the server saw the stall (uvicorn waits for a drain before the next write, not after
        # this one), then everything since in one message, rather than a push per interval
        final_seq = feed.snapshot()["seq"]
        received = []
        for kind, message in sse_messages(chunked_lines(stream)):
            received.append((kind, message))
            if message["seq"] == final_seq:
                break
        assert received[0][0] == "snapshot" and len(received) <= 3
        fills = [f for _, message in received for f in message.get("fills", [])]
        assert fills[-1]["orderId"] == last.order_id and received[-1][1]["counts"]["byTopic"] == end
    wait_until(lambda: feed.clients == 1, timeout_s=10, what="the stalled client to be cleaned up")

    with httpx.stream("GET", url + "/dashboard/stream", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "retry: 2000" and next(lines) == "event: snapshot"
        assert next(lines).startswith("id: ") and next(lines).startswith('data: {"seq":')
        assert feed.clients == 2
    watched.page.close()
    wait_until(lambda: feed.clients == 0, timeout_s=10, what="every stream to be cleaned up")


def test_the_page_and_its_files_are_served_and_an_unknown_file_is_named(live):
    _, _, url = live
    page = httpx.get(url + "/dashboard")
    assert page.status_code == 200 and 'src="dashboard/static/dashboard.js"' in page.text
    assert httpx.get(url + "/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")
    missing = httpx.get(url + "/dashboard/static/app.js")
    assert missing.status_code == 404 and "'app.js'" in missing.text and "dashboard.js" in missing.text
