"""The live dashboard (R8.5): one page showing the pipeline as it runs, kept current by
Server-Sent Events.

:class:`DashboardFeed` subscribes to a :class:`~tradepipe.runtime.tail.BusTail` and keeps a
bounded picture of recent activity: prices per symbol (one point per closed bar of the
symbol's first timeframe, the latest quote from ticks), signals (validated and rejected),
fills, open and closed positions, equity and drawdown, observed tick -> order latency,
consumer lag (from an optional provider), circuit breakers, alerts and the trading state.
:func:`dashboard_router` serves the page (``GET /dashboard``, its script and style, nothing
from a CDN) and the stream (``GET /dashboard/stream``).

Every change gets a sequence number, and a client is only a cursor: the last sequence number
it was sent. On connect it gets a ``snapshot``; then at most one ``update`` per push interval
with what changed after its cursor (new items of the bounded series, whole small sections
that changed). So the tail thread never waits for a client and holds no per-client queue: a
slow client just receives a bigger, coalesced update when it catches up, or a fresh snapshot
if what it missed has already been dropped from the series. A disconnected client's stream
is cancelled by the server and unregisters itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import resources
from typing import Any

import msgspec
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from tradepipe.bus.base import Record
from tradepipe.events.envelope import Event
from tradepipe.read.model import ReadModel
from tradepipe.runtime.tail import BusTail

log = logging.getLogger(__name__)

# How much of the recent past the page can show (items per series).
SERIES_LIMITS = {
    "prices": 1500,  # per symbol: a day of 1-minute bars
    "signals": 500,
    "fills": 200,
    "closed": 200,
    "equity": 1000,
    "latency": 200,  # tick -> order samples, for the sparkline
    "alertLog": 100,
}
LATENCY_TICKS_KEPT = 4096  # ticks remembered to time their order: an order follows its tick closely
LAG_REFRESH_S = 1.0
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream


class _Series:
    """An append-only bounded series of (seq, item); remembers the newest seq it dropped, so a
    client whose cursor is older knows it missed items."""

    __slots__ = ("items", "dropped_seq")

    def __init__(self, limit: int) -> None:
        self.items: deque[tuple[int, Any]] = deque(maxlen=limit)
        self.dropped_seq = 0

    def append(self, seq: int, item: Any) -> None:
        if len(self.items) == self.items.maxlen:
            self.dropped_seq = self.items[0][0]
        self.items.append((seq, item))

    def since(self, cursor: int) -> list[Any]:
        newer = []
        for seq, item in reversed(self.items):
            if seq <= cursor:
                break
            newer.append(item)
        newer.reverse()
        return newer

    def all(self) -> list[Any]:
        return [item for _, item in self.items]


def _ms(event: Event) -> int:
    return event.timestamp_ms


class DashboardFeed:
    """Bounded recent state of the pipeline, built from the events a :class:`BusTail` sees.

    ``read_model`` (optional) seeds what happened before the tail started: open positions,
    recent fills, the trading state and the latest equity. ``lag`` (optional) returns consumer
    lag as ``{name: records behind}``, a name being a string or a tuple such as (group, topic,
    partition) (shown joined by "/"); it is called at most once a second, off the event loop.
    """

    def __init__(self, tail: BusTail | None = None, *, read_model: ReadModel | None = None,
                 lag: Callable[[], Mapping[str | tuple, int]] | None = None, push_interval_s: float = 0.1,
                 limits: Mapping[str, int] | None = None) -> None:
        self.push_interval_s = push_interval_s
        self.limits = {**SERIES_LIMITS, **(limits or {})}
        self._lag_provider = lag
        self._lag_due = 0.0
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self._clients: set[int] = set()
        self._next_client = 0
        self._prices: dict[str, _Series] = {}
        self._timeframes: dict[str, str] = {}  # symbol -> the timeframe its price series follows
        self._series = {name: _Series(limit) for name, limit in self.limits.items() if name != "prices"}
        # small sections, sent whole when they change: the seq of each one's last change, the
        # values of those replaced whole, and views of those kept in live containers
        self._changed: dict[str, int] = {}
        self._values: dict[str, Any] = {}
        self._quotes: dict[str, dict[str, Any]] = {}
        self._open: dict[str, dict[str, Any]] = {}
        self._breakers: dict[str, dict[str, Any]] = {}
        self._alerts: dict[str, dict[str, Any]] = {}
        self._counts: dict[str, int] = {}
        self._peak_equity: float | None = None
        self._tick_seen: OrderedDict[Any, float] = OrderedDict()  # correlation root -> monotonic time seen
        self._latencies: deque[float] = deque(maxlen=self.limits["latency"])
        self._views: dict[str, Callable[[], Any]] = {
            "quotes": lambda: dict(self._quotes),
            "positions": lambda: list(self._open.values()),
            "breakers": lambda: dict(self._breakers),
            "alerts": lambda: list(self._alerts.values()),
            "counts": lambda: {"events": sum(self._counts.values()), "byTopic": dict(self._counts),
                               "lastEventTime": self._last_event_ms},
        }
        self._last_event_ms = 0
        self._handlers: dict[str, Callable[[Event], None]] = {
            "MarketDataReceived": self._on_tick,
            "BarClosed": self._on_bar,
            "SignalValidated": self._on_verdict,
            "SignalRejected": self._on_verdict,
            "OrderPlaced": self._on_order_placed,
            "OrderExecuted": self._on_fill,
            "PositionClosed": self._on_position_closed,
            "PerformanceCalculated": self._on_performance,
            "TradingStateChanged": self._on_trading_state,
            "CircuitBreakerStateChanged": self._on_breaker,
            "AlertRaised": self._on_alert_raised,
            "AlertResolved": self._on_alert_resolved,
        }
        if read_model is not None:
            self._seed(read_model)
        self._unsubscribe = tail.subscribe(self.on_event) if tail is not None else None

    # --- clients ---------------------------------------------------------------------------

    @property
    def clients(self) -> int:
        """Streams currently connected."""
        with self._lock:
            return len(self._clients)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop following the tail and end every stream at its next push (call before the
        server's shutdown: uvicorn waits for open streams)."""
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()

    def connect(self) -> int:
        with self._lock:
            self._next_client += 1
            self._clients.add(self._next_client)
            return self._next_client

    def disconnect(self, client: int) -> None:
        with self._lock:
            self._clients.discard(client)

    # --- messages ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything kept: what a client starts from."""
        with self._lock:
            message: dict[str, Any] = {"seq": self._seq, "limits": self.limits,
                                       "prices": {s: series.all() for s, series in self._prices.items()}}
            message.update((name, series.all()) for name, series in self._series.items())
            message.update((name, self._section(name)) for name in self._changed)
            return message

    def changes_since(self, cursor: int) -> tuple[str, dict[str, Any]] | None:
        """``("update", message)`` with what changed after ``cursor``, ``("snapshot", ...)``
        when some of it was already dropped, or None when nothing changed."""
        with self._lock:
            if self._seq == cursor:
                return None
            dropped = max((s.dropped_seq for s in (*self._prices.values(), *self._series.values())), default=0)
            if dropped > cursor:
                behind = True
            else:
                behind = False
                message: dict[str, Any] = {"seq": self._seq}
                prices = {s: new for s, series in self._prices.items() if (new := series.since(cursor))}
                if prices:
                    message["prices"] = prices
                for name, series in self._series.items():
                    if new := series.since(cursor):
                        message[name] = new
                message.update((name, self._section(name)) for name, seq in self._changed.items() if seq > cursor)
        if behind:
            return "snapshot", self.snapshot()
        return "update", message

    def refresh_lag(self) -> None:
        """Ask the lag provider again if a second has passed (blocking: run it off the loop)."""
        now = time.monotonic()
        with self._lock:
            if self._lag_provider is None or now < self._lag_due:
                return
            self._lag_due = now + LAG_REFRESH_S
        try:
            lag = {"/".join(map(str, name)) if isinstance(name, tuple) else str(name): behind
                   for name, behind in self._lag_provider().items()}
        except Exception as exc:  # a bus away: the page says so rather than the stream dying
            log.warning("dashboard lag provider: %s", exc)
            lag = {"error": str(exc)}
        with self._lock:
            self._set("lag", lag)

    # --- events ------------------------------------------------------------------------------

    def on_event(self, event: Event, record: Record | None = None) -> None:
        """The tail subscriber: fold one event into the state."""
        handler = self._handlers.get(type(event).__name__)
        with self._lock:
            self._counts[event.topic] = self._counts.get(event.topic, 0) + 1
            self._last_event_ms = _ms(event)
            if handler is not None:
                handler(event)
            self._touch("counts")

    def _bump(self) -> int:
        self._seq += 1
        return self._seq

    def _touch(self, section: str) -> None:
        self._changed[section] = self._bump()

    def _set(self, section: str, value: Any) -> None:
        self._values[section] = value
        self._touch(section)

    def _section(self, name: str) -> Any:
        view = self._views.get(name)
        return view() if view is not None else self._values[name]

    def _append(self, series: str, item: Any) -> None:
        self._series[series].append(self._bump(), item)

    def _on_tick(self, event) -> None:
        data = event.data
        self._quotes[event.symbol] = {"bid": data.bid, "ask": data.ask, "mid": (data.bid + data.ask) / 2,
                                      "time": _ms(event)}
        self._touch("quotes")
        self._remember_tick(event.event_id)

    def _on_bar(self, event) -> None:
        # a bar read from a file (no tick) roots its own correlation
        self._remember_tick(event.correlation_id or event.event_id)
        timeframe = self._timeframes.setdefault(event.symbol, event.timeframe)
        if event.timeframe != timeframe:
            return
        series = self._prices.get(event.symbol)
        if series is None:
            series = self._prices[event.symbol] = _Series(self.limits["prices"])
        series.append(self._bump(), [_ms(event), event.mid.close])
        if event.symbol not in self._quotes:  # a bar-only feed still shows a last price
            self._quotes[event.symbol] = {"bid": event.bid.close, "ask": event.ask.close,
                                          "mid": event.mid.close, "time": _ms(event)}
            self._touch("quotes")

    def _remember_tick(self, root: Any) -> None:
        seen = self._tick_seen
        if root not in seen:
            seen[root] = time.monotonic()
            if len(seen) > LATENCY_TICKS_KEPT:
                seen.popitem(last=False)

    def _on_verdict(self, event) -> None:
        accepted = type(event).__name__ == "SignalValidated"
        failed = [v.rule for v in event.verdicts if not v.passed]
        self._append("signals", {"time": _ms(event), "symbol": event.symbol, "direction": event.direction,
                                 "confidence": event.confidence, "price": event.price, "accepted": accepted,
                                 "rule": ", ".join(failed), "id": str(event.signal_id)})

    def _on_order_placed(self, event) -> None:
        if event.reason != "signal":
            return
        started = self._tick_seen.get(event.correlation_id)
        if started is None:
            return
        elapsed_ms = (time.monotonic() - started) * 1000.0
        self._latencies.append(elapsed_ms)
        self._append("latency", [int(time.time() * 1000), round(elapsed_ms, 3)])
        ordered = sorted(self._latencies)

        def quantile(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)
        self._set("latencyStats", {"samples": len(ordered), "p50": quantile(0.5), "p95": quantile(0.95),
                                   "max": round(ordered[-1], 3), "last": round(elapsed_ms, 3)})

    def _on_fill(self, event) -> None:
        opens = event.position_id in ("", event.order_id)
        self._append("fills", {"time": _ms(event), "orderId": event.order_id, "symbol": event.symbol,
                               "side": event.side, "volume": event.volume, "price": event.price,
                               "commission": event.commission, "positionId": event.position_id or event.order_id,
                               "opens": opens})
        if opens:
            self._open[event.position_id or event.order_id] = {
                "positionId": event.position_id or event.order_id, "symbol": event.symbol, "side": event.side,
                "volume": event.volume, "entryPrice": event.price, "openedAt": _ms(event)}
            self._touch("positions")

    def _on_position_closed(self, event) -> None:
        self._open.pop(event.position_id, None)
        self._touch("positions")
        self._append("closed", {"time": _ms(event), "positionId": event.position_id, "symbol": event.symbol,
                                "side": event.side, "volume": event.volume, "entryPrice": event.entry_price,
                                "exitPrice": event.exit_price, "pnl": event.pnl, "reason": event.reason})

    def _equity_point(self, at_ms: int, equity: float) -> None:
        self._peak_equity = equity if self._peak_equity is None else max(self._peak_equity, equity)
        drawdown = 1.0 - equity / self._peak_equity if self._peak_equity > 0 else 0.0
        self._append("equity", [at_ms, equity, round(drawdown, 6)])

    def _on_performance(self, event) -> None:
        self._equity_point(_ms(event), event.equity)
        self._set("performance", {"time": _ms(event), "equity": event.equity, "realizedPnl": event.realized_pnl,
                                  "unrealizedPnl": event.unrealized_pnl, "trades": event.trades,
                                  "metrics": dict(event.metrics)})

    def _on_trading_state(self, event) -> None:
        self._set("trading", {"state": event.state, "reason": event.reason, "time": _ms(event),
                              "drawdown": event.drawdown})
        if event.equity is not None:
            self._equity_point(_ms(event), event.equity)

    def _on_breaker(self, event) -> None:
        self._breakers[event.breaker] = {"breaker": event.breaker, "state": event.to_state, "from": event.from_state,
                                         "failures": event.failures, "reason": event.reason, "time": _ms(event)}
        self._touch("breakers")

    def _on_alert_raised(self, event) -> None:
        alert = {"rule": event.rule, "subject": event.subject or event.symbol or "", "severity": event.severity,
                 "message": event.message, "value": event.value, "threshold": event.threshold, "time": _ms(event)}
        self._alerts[f"{event.rule}/{alert['subject']}"] = alert
        self._touch("alerts")
        self._append("alertLog", {**alert, "resolved": False})

    def _on_alert_resolved(self, event) -> None:
        subject = event.subject or event.symbol or ""
        raised = self._alerts.pop(f"{event.rule}/{subject}", None)
        self._touch("alerts")
        self._append("alertLog", {"rule": event.rule, "subject": subject, "resolved": True, "time": _ms(event),
                                  "severity": (raised or {}).get("severity", "info"), "value": event.value,
                                  "message": event.message or "resolved"})

    def _seed(self, read_model: ReadModel) -> None:
        """What the projections know from before the tail started."""
        with self._lock:
            for p in read_model.positions(open_only=True):
                self._open[p.position_id] = {"positionId": p.position_id, "symbol": p.symbol, "side": p.side,
                                             "volume": p.volume, "entryPrice": p.entry_price,
                                             "openedAt": int(p.opened_at.timestamp() * 1000)}
            self._touch("positions")
            for t in sorted(read_model.trades(limit=self.limits["fills"]), key=lambda t: t.executed_at):
                self._append("fills", {"time": int(t.executed_at.timestamp() * 1000), "orderId": t.order_id,
                                       "symbol": t.symbol, "side": t.side, "volume": t.volume, "price": t.price,
                                       "commission": t.commission, "positionId": t.position_id,
                                       "opens": t.position_id in ("", t.order_id)})
            portfolio = read_model.portfolio()
            self._set("trading", {"state": portfolio.trading_state, "reason": portfolio.trading_state_reason,
                                  "time": None, "drawdown": None})
            performance = read_model.performance()
            if performance is not None:
                self._on_performance_view(performance)

    def _on_performance_view(self, view) -> None:
        at_ms = int(view.time.timestamp() * 1000)
        self._equity_point(at_ms, view.equity)
        self._set("performance", {"time": at_ms, "equity": view.equity, "realizedPnl": view.realized_pnl,
                                  "unrealizedPnl": view.unrealized_pnl, "trades": view.trades,
                                  "metrics": dict(view.metrics)})


# --- HTTP --------------------------------------------------------------------------------------

_STATIC = {  # file -> media type: the page and what it loads, all shipped with the package
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_NO_CACHE = {"Cache-Control": "no-cache"}


def _static(name: str) -> bytes:
    return resources.files("tradepipe.ops").joinpath("static", name).read_bytes()


def _sse(kind: str, message: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\nid: " + str(message["seq"]).encode() + b"\ndata: " \
        + msgspec.json.encode(message) + b"\n\n"


async def stream_messages(feed: DashboardFeed) -> AsyncIterator[bytes]:
    """One client's stream: a snapshot, then coalesced updates each push interval, a keepalive
    comment when idle, until the feed closes or the server cancels it (the client went away)."""
    client = feed.connect()
    try:
        snapshot = feed.snapshot()
        cursor = snapshot["seq"]
        yield b"retry: 2000\n" + _sse("snapshot", snapshot)
        quiet_since = time.monotonic()
        while not feed.closed:
            await asyncio.sleep(feed.push_interval_s)
            await asyncio.to_thread(feed.refresh_lag)
            change = feed.changes_since(cursor)
            if change is not None:
                kind, message = change
                cursor = message["seq"]
                yield _sse(kind, message)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield b": keepalive\n\n"
                quiet_since = time.monotonic()
    finally:
        feed.disconnect(client)


def dashboard_router(feed: DashboardFeed) -> APIRouter:
    """``GET /dashboard`` (the page), ``/dashboard/static/{file}`` (its script and style) and
    ``/dashboard/stream`` (Server-Sent Events). Kept out of the OpenAPI spec: a page and an
    endless stream are not API operations (and would stall an API fuzzer)."""
    router = APIRouter(include_in_schema=False)
    files = {name: _static(name) for name in _STATIC}

    @router.get("/dashboard")
    def page() -> HTMLResponse:
        return HTMLResponse(files["dashboard.html"], headers=_NO_CACHE)

    @router.get("/dashboard/static/{name}")
    def static(name: str) -> Response:
        if name not in files:
            return Response(f"no dashboard file {name!r}; there are: {', '.join(sorted(files))}",
                            status_code=404, media_type="text/plain")
        return Response(files[name], media_type=_STATIC[name], headers=_NO_CACHE)

    @router.get("/dashboard/stream")
    def stream() -> StreamingResponse:
        # X-Accel-Buffering: a reverse proxy (nginx) must pass events through as they come
        return StreamingResponse(stream_messages(feed), media_type="text/event-stream",
                                 headers={**_NO_CACHE, "X-Accel-Buffering": "no"})

    return router

