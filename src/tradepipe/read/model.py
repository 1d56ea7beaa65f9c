"""What the read side serves (R8.1): the views of the projections and the two query
interfaces the API gateway, the dashboard and the Telegram bot read from.

- :class:`ReadModel`: the transactional projections (current prices, positions, portfolio,
  trades, orders, latest performance), kept in SQLite or PostgreSQL;
- :class:`AnalyticsQueries`: the analytics store (ClickHouse: chDB embedded or a server).

Views are frozen structs: the API returns them as JSON as they are (camelCase like events).
Every view is built only from events, so a rebuild by replay gives the same rows.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal, Protocol

import msgspec

PositionStatus = Literal["OPEN", "CLOSED"]
OrderStatus = Literal["PLACED", "FILLED", "REJECTED", "CANCELLED"]


class View(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of read-side rows: camelCase in JSON, like the events they come from."""


class PriceView(View, frozen=True, kw_only=True):
    symbol: str
    bid: float
    ask: float
    mid: float
    time: datetime  # event time of the latest tick


class PositionView(View, frozen=True, kw_only=True):
    position_id: str
    symbol: str
    side: Literal["BUY", "SELL"]
    volume: float
    entry_price: float
    opened_at: datetime
    status: PositionStatus
    exit_price: float | None = None
    closed_at: datetime | None = None
    pnl: float | None = None  # realized, once closed
    close_reason: str | None = None
    unrealized_pnl: float | None = None  # open positions: at the latest price (query time)


class PortfolioView(View, frozen=True, kw_only=True):
    initial_equity: float
    realized_pnl: float
    unrealized_pnl: float  # open positions at the latest prices (computed at query time)
    equity: float  # initial + realized + unrealized
    open_positions: int
    closed_positions: int
    trades: int  # fills
    last_trade_at: datetime | None = None
    trading_state: Literal["ACTIVE", "HALTED"] = "ACTIVE"
    trading_state_reason: str = ""


class TradeView(View, frozen=True, kw_only=True):
    """One fill (OrderExecuted)."""

    trade_id: str  # the fill event's id
    order_id: str
    symbol: str
    side: Literal["BUY", "SELL"]
    volume: float
    price: float
    commission: float
    slippage: float
    position_id: str
    broker: str
    executed_at: datetime


class OrderView(View, frozen=True, kw_only=True):
    order_id: str
    symbol: str
    side: Literal["BUY", "SELL"]
    volume: float
    order_type: str
    reason: str  # why it was placed: signal, stop-loss, manual, ...
    status: OrderStatus
    placed_at: datetime
    updated_at: datetime
    fill_price: float | None = None
    detail: str = ""  # the rejection or cancellation reason


class PerformanceView(View, frozen=True, kw_only=True):
    """The latest PerformanceCalculated."""

    time: datetime
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    trades: int
    metrics: dict[str, float | None]


class ReadModel(Protocol):
    """Queries over the transactional projections (SQLite or PostgreSQL)."""

    def prices(self) -> list[PriceView]: ...

    def price(self, symbol: str) -> PriceView | None: ...

    def positions(self, *, open_only: bool = True) -> list[PositionView]: ...

    def portfolio(self) -> PortfolioView: ...

    def trades(self, *, symbol: str | None = None, limit: int = 100) -> list[TradeView]: ...

    def orders(self, *, symbol: str | None = None, limit: int = 100) -> list[OrderView]: ...

    def order(self, order_id: str) -> OrderView | None: ...

    def performance(self) -> PerformanceView | None: ...


class Candle(View, frozen=True, kw_only=True):
    time: datetime  # the bar's open time
    open: float
    high: float
    low: float
    close: float
    ticks: int


class HourlyHitRate(View, frozen=True, kw_only=True):
    model: str
    hour: int  # UTC hour of day of the prediction
    predictions: int  # resolved BUY/SELL predictions
    hits: int
    hit_rate: float | None


class DailyPnl(View, frozen=True, kw_only=True):
    day: date
    pnl: float  # realized, positions closed that day
    positions_closed: int


class PredictionView(View, frozen=True, kw_only=True):
    time: datetime
    symbol: str
    model: str
    direction: str
    confidence: float
    price: float | None = None


class AnalyticsQueries(Protocol):
    """Queries over the analytics store (ClickHouse tables)."""

    def ohlc(self, symbol: str, timeframe: str, start: datetime | None = None,
             end: datetime | None = None, limit: int = 1000) -> list[Candle]: ...

    def hit_rate_by_hour(self, model: str | None = None) -> list[HourlyHitRate]: ...

    def pnl_by_day(self, symbol: str | None = None) -> list[DailyPnl]: ...

    def predictions(self, *, symbol: str | None = None, model: str | None = None,
                    limit: int = 100) -> list[PredictionView]: ...
