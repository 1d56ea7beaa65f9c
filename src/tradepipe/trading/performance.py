"""Performance metrics (R7.4): pure functions over an equity curve and closed trades.

Each metric has one implementation, an accumulator fed one observation at a time, so the
analytics service (which sees a run event by event and must keep bounded state) and the
functions over whole arrays (tests, tools) compute the same numbers:

- :class:`ReturnStats`: Sharpe and Sortino from the simple returns of equity sampled at a
  fixed event-time interval, annualised by ``sqrt(periods_per_year)``. The returns are per
  *trading* period: FX trades 24 hours a day, 5 days a week, so a year has
  :data:`TRADING_SECONDS_PER_YEAR` = 260 days x 86,400 s of trading time, and 1-minute samples
  give 374,400 periods a year (:func:`periods_per_year`). Weekends and other gaps without
  events are not filled with zero returns (that would shrink the deviation and inflate the
  ratio): the move across a gap is one period's return. The risk-free rate is 0 (intraday
  returns). Sharpe = mean / sample standard deviation (n - 1); Sortino = mean / downside
  deviation, the root mean square of ``min(r, 0)`` over all n returns (target 0). Either is
  None when undefined: fewer than 2 returns or a zero deviation.
- :class:`DrawdownTracker`: the largest fall from a running peak, as a fraction of that peak,
  with the peak's and the trough's times.
- :class:`TradeStats`: win rate (share of trades with pnl > 0), profit factor (gross profit /
  gross loss, None without losses), average win and average loss (a negative number).
- :class:`ExposureClock`: the share of time with at least one open position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import msgspec

TRADING_SECONDS_PER_YEAR = 260 * 86_400  # FX: 24 h a day, 5 days a week, 52 weeks


def periods_per_year(period_s: float) -> float:
    """How many sampling periods of ``period_s`` seconds a trading year holds."""
    return TRADING_SECONDS_PER_YEAR / period_s


# --- returns: Sharpe and Sortino -------------------------------------------------------------

class ReturnStats(msgspec.Struct):
    """Running mean and variance of returns (Welford) and their downside sum of squares."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the running mean
    downside_sq: float = 0.0  # sum of min(r, 0)^2

    def add(self, r: float) -> None:
        self.count += 1
        delta = r - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (r - self.mean)
        if r < 0:
            self.downside_sq += r * r

    def sharpe(self, periods: float) -> float | None:
        if self.count < 2:
            return None
        std = math.sqrt(self.m2 / (self.count - 1))
        return None if std == 0 else self.mean / std * math.sqrt(periods)

    def sortino(self, periods: float) -> float | None:
        if self.count < 2:
            return None
        downside = math.sqrt(self.downside_sq / self.count)
        return None if downside == 0 else self.mean / downside * math.sqrt(periods)


def _returns(equity: Sequence[float]) -> ReturnStats:
    stats = ReturnStats()
    for before, after in zip(equity, equity[1:]):
        stats.add(after / before - 1.0)
    return stats


def sharpe(equity: Sequence[float], periods: float) -> float | None:
    """Annualised Sharpe ratio of ``equity`` sampled once a period (``periods`` a year)."""
    return _returns(equity).sharpe(periods)


def sortino(equity: Sequence[float], periods: float) -> float | None:
    """Annualised Sortino ratio of ``equity`` sampled once a period (``periods`` a year)."""
    return _returns(equity).sortino(periods)


# --- drawdown --------------------------------------------------------------------------------

class DrawdownTracker(msgspec.Struct):
    """The running peak and the largest drawdown seen so far. Times are whatever the caller
    uses (epoch ms in the service); ``max_peak_ms`` / ``max_trough_ms`` are None until
    equity first falls below a peak."""

    peak: float | None = None
    peak_ms: int | None = None
    max_drawdown: float = 0.0  # fraction of the peak
    max_peak_ms: int | None = None
    max_trough_ms: int | None = None

    def update(self, t_ms: int, equity: float) -> None:
        if self.peak is None or equity > self.peak:
            self.peak, self.peak_ms = equity, t_ms
            return
        drawdown = (self.peak - equity) / self.peak if self.peak > 0 else 0.0
        if drawdown > self.max_drawdown:
            self.max_drawdown, self.max_peak_ms, self.max_trough_ms = drawdown, self.peak_ms, t_ms

    def current(self, equity: float) -> float:
        """The drawdown of ``equity`` from the peak so far."""
        if self.peak is None or self.peak <= 0 or equity >= self.peak:
            return 0.0
        return (self.peak - equity) / self.peak


def max_drawdown(times_ms: Sequence[int], equity: Sequence[float]) -> DrawdownTracker:
    """The largest peak-to-trough fall of ``equity`` (fraction of the peak) and when."""
    tracker = DrawdownTracker()
    for t, value in zip(times_ms, equity):
        tracker.update(t, value)
    return tracker


def drawdown_series(equity: Sequence[float]) -> list[float]:
    """The drawdown (fraction of the running peak) at every point of ``equity`` (plots)."""
    tracker, out = DrawdownTracker(), []
    for value in equity:
        tracker.update(0, value)
        out.append(tracker.current(value))
    return out


# --- trades ----------------------------------------------------------------------------------

class TradeStats(msgspec.Struct):
    """Counts and sums of closed trades' realized PnL."""

    trades: int = 0
    wins: int = 0
    losses: int = 0
    gross_profit: float = 0.0
    gross_loss: float = 0.0  # positive: the sum of the losing trades' |pnl|

    def add(self, pnl: float) -> None:
        self.trades += 1
        if pnl > 0:
            self.wins += 1
            self.gross_profit += pnl
        elif pnl < 0:
            self.losses += 1
            self.gross_loss -= pnl

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.trades if self.trades else None

    @property
    def profit_factor(self) -> float | None:
        return self.gross_profit / self.gross_loss if self.losses else None

    @property
    def average_win(self) -> float | None:
        return self.gross_profit / self.wins if self.wins else None

    @property
    def average_loss(self) -> float | None:
        return -self.gross_loss / self.losses if self.losses else None


def trade_stats(pnls: Iterable[float]) -> TradeStats:
    """Win rate, profit factor, average win and loss and count of trades with ``pnls``."""
    stats = TradeStats()
    for pnl in pnls:
        stats.add(pnl)
    return stats


# --- exposure --------------------------------------------------------------------------------

class ExposureClock(msgspec.Struct):
    """Time with at least one open position, out of the time observed (ms)."""

    start_ms: int | None = None
    open_positions: int = 0
    open_since_ms: int | None = None
    open_ms: int = 0

    def observe(self, t_ms: int) -> None:
        """Start the observed time at the first call."""
        if self.start_ms is None:
            self.start_ms = t_ms

    def opened(self, t_ms: int) -> None:
        self.observe(t_ms)
        if self.open_positions == 0:
            self.open_since_ms = t_ms
        self.open_positions += 1

    def closed(self, t_ms: int) -> None:
        if self.open_positions == 0:
            return  # a close of a position opened before we watched: no open time to count
        self.open_positions -= 1
        if self.open_positions == 0 and self.open_since_ms is not None:
            self.open_ms += max(t_ms - self.open_since_ms, 0)
            self.open_since_ms = None

    def share(self, now_ms: int) -> float | None:
        """Share of [first observation, ``now_ms``] with an open position; None before any time passed."""
        if self.start_ms is None or now_ms <= self.start_ms:
            return None
        running = now_ms - self.open_since_ms if self.open_since_ms is not None else 0
        return (self.open_ms + max(running, 0)) / (now_ms - self.start_ms)


def exposure(intervals: Iterable[tuple[int, int]], start_ms: int, end_ms: int) -> float | None:
    """Share of [``start_ms``, ``end_ms``] covered by the (possibly overlapping) open
    intervals ``(opened_ms, closed_ms)``."""
    clock = ExposureClock(start_ms=start_ms)
    changes = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda c: (c[0], -c[1]))
    for t, change in changes:
        (clock.opened if change > 0 else clock.closed)(t)
    return clock.share(end_ms)


__all__ = [
    "TRADING_SECONDS_PER_YEAR", "DrawdownTracker", "ExposureClock", "ReturnStats", "TradeStats",
    "drawdown_series", "exposure", "max_drawdown", "periods_per_year", "sharpe", "sortino", "trade_stats",
]
