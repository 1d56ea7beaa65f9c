"""Performance analytics (port 8002, R7.4): equity, PnL, risk ratios and hit rates from events.

Positions come from the order events alone: an OrderExecuted whose ``positionId`` is its own
``orderId`` opens a position; any other names the position it closes (its fill freezes the
position's mark at the fill price, so equity does not jump while the PositionClosed is on its
way); the PositionClosed moves the position's PnL (the trading engine's figure, after both
legs' commissions) to realized. Open positions are marked at the last bid (long) or ask
(short) of their symbol, less the entry commission already paid. Ticks are by far the most
frequent input, so the tick path only stores the quote of symbols with an open position and
compares the event time with the next due time; everything else is computed when asked.

Event time drives everything, decided on the events seen (no timers):

- equity is sampled on a fixed grid of ``sample_s`` (the models' timeframe): the first event
  at or after a grid point records the equity as it stood then (before that event). Sharpe
  and Sortino use the returns between consecutive samples (see
  :mod:`tradepipe.trading.performance` for the annualisation); the drawdown also sees the
  equity after every PositionClosed. The curve kept for plots is bounded: past
  ``MAX_CURVE_POINTS`` it is thinned to every other point and later samples are kept at the
  coarser stride;
- every ``interval_s`` a PerformanceCalculated is emitted by the event that crossed the
  interval (its cause), with no correlationId: it belongs to no tick's chain.

Hit rates: each model's own predictions (fallbacks excluded: the model did not make them) and
the ensemble's signals are scored by :mod:`tradepipe.models.scoring`, the rule of the
ensemble's weights and of training's labels, resolved by the closed bars of their series (a
prediction's horizon is its ``timeHorizon``; a signal's ``horizon_bars`` of its timeframe).
HOLD predictions are counted apart: ``hit_rate`` is over BUY/SELL predictions, ``hit_rate_all``
over every prediction.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from tradepipe.config import AnalyticsSettings
from tradepipe.events import Event
from tradepipe.events.envelope import utc_from_ms
from tradepipe.events.types import (
    MARKET_DATA, ORDERS, PREDICTIONS, SIGNALS, BarClosed, MarketDataReceived, OrderExecuted,
    PerformanceCalculated, PositionClosed, PredictionGenerated, TickData, TradingSignalGenerated,
)
from tradepipe.models.scoring import Awaiting, HorizonScorer, horizon_ms
from tradepipe.runtime.service import Context, Service
from tradepipe.trading.performance import (
    DrawdownTracker, ExposureClock, ReturnStats, TradeStats, periods_per_year,
)

if TYPE_CHECKING:
    from tradepipe.config import Settings

ENSEMBLE = "ensemble"  # the name the ensemble's signals are scored under
MAX_CURVE_POINTS = 20_000
_NEVER = utc_from_ms(0)  # before any event: the first one initialises the grids


def event_ms(t: datetime) -> int:
    """Epoch ms of an event time."""
    return int(t.timestamp() * 1000)


class _Position(msgspec.Struct):
    position_id: str
    symbol: str
    side: str
    volume: float
    price: float
    commission: float  # the entry leg's, already paid
    opened_ms: int
    exit_price: float | None = None  # the closing fill, once it arrived
    exit_commission: float = 0.0

    def unrealized(self, quote: TickData | None) -> float:
        """PnL if closed at ``quote`` (the closing fill once known; the entry price before
        any tick), after the commissions paid or due."""
        if self.exit_price is not None:
            mark = self.exit_price
        elif quote is None:
            mark = self.price
        else:
            mark = quote.bid if self.side == "BUY" else quote.ask
        move = mark - self.price if self.side == "BUY" else self.price - mark
        return move * self.volume - self.commission - self.exit_commission


class HitCount(msgspec.Struct):
    """Resolved predictions of one model: all, directional (BUY/SELL) and HOLD."""

    resolved: int = 0
    hits: int = 0
    directional: int = 0
    directional_hits: int = 0
    holds: int = 0

    def add(self, predicted: str, realized: str) -> None:
        hit = predicted == realized
        self.resolved += 1
        self.hits += hit
        if predicted == "HOLD":
            self.holds += 1
        else:
            self.directional += 1
            self.directional_hits += hit

    @property
    def hit_rate(self) -> float | None:
        return self.directional_hits / self.directional if self.directional else None

    @property
    def hit_rate_all(self) -> float | None:
        return self.hits / self.resolved if self.resolved else None

    def summary(self) -> dict[str, Any]:
        return {**msgspec.to_builtins(self), "hit_rate": self.hit_rate, "hit_rate_all": self.hit_rate_all}


class _State(msgspec.Struct):
    realized_pnl: float
    positions: list[_Position]
    quotes: dict[str, TickData | None]
    curve_ms: list[int]
    curve_equity: list[float]
    curve_stride: int
    unkept_samples: int
    last_sample_equity: float | None
    returns: ReturnStats
    drawdown: DrawdownTracker
    trade_stats: TradeStats
    exposure: ExposureClock
    hits: dict[str, HitCount]
    awaiting: list[list[Any]]
    next_sample_ms: int | None
    next_report_ms: int | None
    last_ms: int | None


class PerformanceAnalytics(Service):
    name = "performance-analytics"
    port = 8002
    inputs = (MARKET_DATA, PREDICTIONS, SIGNALS, ORDERS)

    def __init__(self, settings: AnalyticsSettings, *, initial_equity: float, horizon_bars: int,
                 dead_band: float, sample_s: float = 60.0) -> None:
        """``sample_s``: the equity sampling period (the models' timeframe), ``dead_band``: in
        return units, ``horizon_bars``: bars of a signal's timeframe until it is scored."""
        self.initial_equity = initial_equity
        self.horizon_bars = horizon_bars
        self.interval_ms = int(settings.interval_s * 1000)
        self.sample_ms = int(sample_s * 1000)
        self.periods_per_year = periods_per_year(sample_s)
        # state (snapshot)
        self.realized_pnl = 0.0
        self.positions: dict[str, _Position] = {}  # positionId -> open position
        self.quotes: dict[str, TickData | None] = {}  # last tick of each symbol with an open position
        self.curve_ms: list[int] = []
        self.curve_equity: list[float] = []
        self._curve_stride = 1
        self._unkept_samples = 0
        self._last_sample_equity: float | None = None
        self.returns = ReturnStats()
        self.drawdown = DrawdownTracker()
        self.trade_stats = TradeStats()
        self.exposure = ExposureClock()
        self.hits: dict[str, HitCount] = {}  # model name (or "ensemble") -> resolved predictions
        self.scorer = HorizonScorer(dead_band)
        self._next_sample_ms: int | None = None
        self._next_report_ms: int | None = None
        self._next_due = _NEVER
        self.last_time: datetime | None = None
        # counters (not state)
        self.unknown_positions = 0
        self.reports = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> PerformanceAnalytics:
        models = settings.models
        return cls(settings.analytics, initial_equity=settings.trading.initial_equity, horizon_bars=models.horizon,
                   dead_band=models.dead_band_bps * 1e-4, sample_s=settings.analytics.sample_s)

    # -- handling -------------------------------------------------------------------------
    def handle(self, event: Event, ctx: Context) -> tuple[Event, ...] | list[Event]:
        now = event.timestamp
        out = self._on_time(now, ctx) if now >= self._next_due else ()
        self.last_time = now
        cls = type(event)
        if cls is MarketDataReceived:
            quotes, symbol = self.quotes, event.symbol
            if symbol in quotes:
                quotes[symbol] = event.data
        elif cls is BarClosed:
            self._resolve(event)
        elif cls is PredictionGenerated:
            if not event.fallback:
                self._expect(event, event.model.name, event.prediction.direction,
                             horizon_ms(event.prediction.time_horizon))
        elif cls is TradingSignalGenerated:
            bar = horizon_ms(event.timeframe)
            self._expect(event, ENSEMBLE, event.direction, None if bar is None else bar * self.horizon_bars)
        elif cls is OrderExecuted:
            self._fill(event)
        elif cls is PositionClosed:
            self._close(event)
        return out

    def _on_time(self, now: datetime, ctx: Context) -> list[Event]:
        """The grid points ``now`` crossed: an equity sample and maybe a report."""
        t = event_ms(now)
        out = []
        first = self._next_sample_ms is None
        if first:
            self.exposure.observe(t)
        if first or t >= self._next_sample_ms:
            self._sample(t - t % self.sample_ms)
            self._next_sample_ms = t - t % self.sample_ms + self.sample_ms
        if not first and t >= self._next_report_ms:
            out.append(self._report(ctx))
        if first or t >= self._next_report_ms:
            self._next_report_ms = t - t % self.interval_ms + self.interval_ms
        self._next_due = utc_from_ms(min(self._next_sample_ms, self._next_report_ms))
        return out

    def _sample(self, t: int) -> None:
        equity = self.equity()
        if self._last_sample_equity is not None:
            self.returns.add(equity / self._last_sample_equity - 1.0)
        self._last_sample_equity = equity
        self._unkept_samples += 1
        keep = self._unkept_samples >= self._curve_stride
        if keep:
            self._unkept_samples = 0
        self._point(t, equity, keep=keep)

    def _point(self, t: int, equity: float, *, keep: bool = True) -> None:
        self.drawdown.update(t, equity)
        if not keep:
            return
        self.curve_ms.append(t)
        self.curve_equity.append(equity)
        if len(self.curve_ms) > MAX_CURVE_POINTS:
            del self.curve_ms[1::2], self.curve_equity[1::2]
            self._curve_stride *= 2

    def _report(self, ctx: Context) -> PerformanceCalculated:
        self.reports += 1
        unrealized = self.unrealized_pnl()
        return ctx.emit(
            PerformanceCalculated,
            equity=self.initial_equity + self.realized_pnl + unrealized,
            realized_pnl=self.realized_pnl,
            unrealized_pnl=unrealized,
            trades=self.trade_stats.trades,
            metrics=self.metrics(),
            correlation_id=None,  # the account's, not one tick's
            symbol=None,
        )

    # -- positions ------------------------------------------------------------------------
    def _fill(self, event: OrderExecuted) -> None:
        if event.position_id == event.order_id:
            symbol = event.symbol or ""
            t = event_ms(event.timestamp)
            self.positions[event.position_id] = _Position(
                event.position_id, symbol, event.side, event.volume, event.price, event.commission, t)
            self.quotes.setdefault(symbol, None)
            self.exposure.opened(t)
            return
        position = self.positions.get(event.position_id)
        if position is None:
            self.unknown_positions += 1
            return
        position.exit_price = event.price
        position.exit_commission += event.commission

    def _close(self, event: PositionClosed) -> None:
        t = event_ms(event.timestamp)
        position = self.positions.get(event.position_id)
        if position is None:
            self.unknown_positions += 1  # opened before we watched: its PnL still counts
        elif event.volume < position.volume * (1 - 1e-9):  # partly closed: the rest stays open
            position.commission *= 1 - event.volume / position.volume
            position.volume -= event.volume
            position.exit_price, position.exit_commission = None, 0.0
        else:
            del self.positions[event.position_id]
            if all(p.symbol != position.symbol for p in self.positions.values()):
                del self.quotes[position.symbol]
            self.exposure.closed(t)
        self.realized_pnl += event.pnl
        self.trade_stats.add(event.pnl)
        self._point(t, self.equity())

    def unrealized_pnl(self) -> float:
        quotes = self.quotes
        return sum(p.unrealized(quotes.get(p.symbol)) for p in self.positions.values())

    def equity(self) -> float:
        return self.initial_equity + self.realized_pnl + self.unrealized_pnl()

    # -- hit rates ------------------------------------------------------------------------
    def _expect(self, event: Event, model: str, direction: str, horizon: int | None) -> None:
        bar_time, price = event.bar_time, event.price
        if horizon is None or bar_time is None or price is None or not price > 0:
            return  # cannot be scored
        self.scorer.expect(event.symbol or "", event.timeframe, horizon, Awaiting(bar_time, price, model, direction))

    def _resolve(self, bar: BarClosed) -> None:
        price = bar.mid.close
        if not price > 0:
            return
        for then, realized in self.scorer.resolve(bar.symbol or "", bar.timeframe, bar.bar_time, price):
            count = self.hits.get(then.model)
            if count is None:
                count = self.hits[then.model] = HitCount()
            count.add(then.direction, realized)

    # -- results --------------------------------------------------------------------------
    def max_drawdown(self) -> float:
        """The largest drawdown so far, the current equity included."""
        return max(self.drawdown.max_drawdown, self.drawdown.current(self.equity()))

    def metrics(self) -> dict[str, float | None]:
        stats, periods = self.trade_stats, self.periods_per_year
        metrics: dict[str, float | None] = {
            "sharpe": self.returns.sharpe(periods),
            "sortino": self.returns.sortino(periods),
            "max_drawdown": self.max_drawdown(),
            "win_rate": stats.win_rate,
            "profit_factor": stats.profit_factor,
            "exposure": self.exposure.share(event_ms(self.last_time)) if self.last_time else None,
        }
        for model, count in sorted(self.hits.items()):
            metrics[f"hit_rate_{model}"] = count.hit_rate
            metrics[f"hit_rate_all_{model}"] = count.hit_rate_all
        return metrics

    def summary(self) -> dict[str, Any]:
        """The run's figures, JSON-ready (times as ISO strings, undefined ratios as None)."""
        stats, dd = self.trade_stats, self.drawdown
        unrealized = self.unrealized_pnl()
        equity = self.initial_equity + self.realized_pnl + unrealized
        metrics = self.metrics()

        def iso(ms: int | None) -> str | None:
            return None if ms is None else utc_from_ms(ms).isoformat()

        return {
            "initial_equity": self.initial_equity,
            "equity": equity,
            "return": equity / self.initial_equity - 1.0,
            "realized_pnl": self.realized_pnl,
            "unrealized_pnl": unrealized,
            "max_drawdown": metrics["max_drawdown"],
            "max_drawdown_peak": iso(dd.max_peak_ms),
            "max_drawdown_trough": iso(dd.max_trough_ms),
            "sharpe": metrics["sharpe"],
            "sortino": metrics["sortino"],
            "sample_period_s": self.sample_ms / 1000,
            "periods_per_year": self.periods_per_year,
            "returns_sampled": self.returns.count,
            "win_rate": stats.win_rate,
            "profit_factor": stats.profit_factor,
            "average_win": stats.average_win,
            "average_loss": stats.average_loss,
            "exposure": metrics["exposure"],
            "trades": stats.trades,
            "wins": stats.wins,
            "losses": stats.losses,
            "open_positions": len(self.positions),
            "hit_rates": {model: count.summary() for model, count in sorted(self.hits.items())},
            "first_event": iso(self.exposure.start_ms),
            "last_event": self.last_time.isoformat() if self.last_time else None,
        }

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return msgspec.to_builtins(_State(
            realized_pnl=self.realized_pnl, positions=list(self.positions.values()), quotes=self.quotes,
            curve_ms=self.curve_ms, curve_equity=self.curve_equity, curve_stride=self._curve_stride,
            unkept_samples=self._unkept_samples, last_sample_equity=self._last_sample_equity,
            returns=self.returns, drawdown=self.drawdown, trade_stats=self.trade_stats, exposure=self.exposure,
            hits=self.hits, awaiting=self.scorer.snapshot(), next_sample_ms=self._next_sample_ms,
            next_report_ms=self._next_report_ms, last_ms=event_ms(self.last_time) if self.last_time else None,
        ))

    def restore(self, state: dict[str, Any]) -> None:
        s = msgspec.convert(state, _State)
        self.realized_pnl = s.realized_pnl
        self.positions = {p.position_id: p for p in s.positions}
        self.quotes = s.quotes
        self.curve_ms, self.curve_equity = s.curve_ms, s.curve_equity
        self._curve_stride, self._unkept_samples = s.curve_stride, s.unkept_samples
        self._last_sample_equity = s.last_sample_equity
        self.returns, self.drawdown, self.trade_stats, self.exposure = s.returns, s.drawdown, s.trade_stats, s.exposure
        self.hits = s.hits
        self.scorer.restore(s.awaiting)
        self._next_sample_ms, self._next_report_ms = s.next_sample_ms, s.next_report_ms
        due = [t for t in (s.next_sample_ms, s.next_report_ms) if t is not None]
        self._next_due = utc_from_ms(min(due)) if due else _NEVER
        self.last_time = utc_from_ms(s.last_ms) if s.last_ms is not None else None


__all__ = ["ENSEMBLE", "HitCount", "PerformanceAnalytics", "event_ms"]
