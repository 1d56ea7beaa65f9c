"""Market microstructure statistics of one bar, from its ticks (R5.3); O(1) per tick.

The bars are those of :class:`tradepipe.features.bars.OpenBars` (same bucket rule as the bar
builder); :class:`MicrostructureAccumulator` is what each of them accumulates, and
:func:`microstructure_features` turns a closed bar into its feature map:

==================  ========================================================================
``spread_mean``     mean of ask - bid over the bar's ticks
``spread_max``      largest ask - bid
``mid_close``       the last tick's mid
``micro_price``     the last tick's size-weighted mid, (bid * ask_size + ask * bid_size) /
                    (bid_size + ask_size); None when the tick has no sizes (both 0: the
                    recorded data and TickData carry none), never a made-up value
``tick_count``      ticks in the bar
``tick_rate``       ticks per second over the bar's length (the timeframe)
``realized_vol``    sqrt of the sum of squared log mid returns between consecutive ticks
                    of the bar (0.0 for a bar of one tick)
``tick_imbalance``  (upticks - downticks) / (upticks + downticks) of the mid between
                    consecutive ticks of the bar; None if the mid never moved
==================  ========================================================================
"""

from __future__ import annotations

from math import log, sqrt

from tradepipe.features.bars import Accumulator, ClosedBar


def micro_price(bid: float, ask: float, bid_size: float, ask_size: float) -> float | None:
    """Size-weighted mid, leaning toward the side with less size; None without sizes."""
    if bid_size >= 0.0 and ask_size >= 0.0 and bid_size + ask_size > 0.0:
        return (bid * ask_size + ask * bid_size) / (bid_size + ask_size)
    return None


class MicrostructureAccumulator(Accumulator):
    """Tick statistics of one bar. ``bid_size``/``ask_size`` are top-of-book sizes, 0 when
    the feed has none."""

    __slots__ = (
        "tick_count", "spread_sum", "spread_max", "sum_sq_returns", "upticks", "downticks",
        "bid", "ask", "mid", "bid_size", "ask_size",
    )

    def __init__(
        self, bid: float, ask: float, mid: float, spread: float, bid_size: float = 0.0, ask_size: float = 0.0
    ) -> None:
        self.tick_count = 1
        self.spread_sum = self.spread_max = spread
        self.sum_sq_returns = 0.0
        self.upticks = self.downticks = 0
        self.bid = bid
        self.ask = ask
        self.mid = mid
        self.bid_size = bid_size
        self.ask_size = ask_size

    def add(
        self, bid: float, ask: float, mid: float, spread: float, bid_size: float = 0.0, ask_size: float = 0.0
    ) -> None:
        previous = self.mid
        if mid != previous:
            change = log(mid / previous)
            self.sum_sq_returns += change * change
            if mid > previous:
                self.upticks += 1
            else:
                self.downticks += 1
        self.tick_count += 1
        self.spread_sum += spread
        if spread > self.spread_max:
            self.spread_max = spread
        self.bid = bid
        self.ask = ask
        self.mid = mid
        self.bid_size = bid_size
        self.ask_size = ask_size


#: the keys of :func:`microstructure_features`, in order
NAMES = ("spread_mean", "spread_max", "mid_close", "micro_price", "tick_count", "tick_rate", "realized_vol",
         "tick_imbalance")


def microstructure_features(bar: ClosedBar[MicrostructureAccumulator]) -> dict[str, float | None]:
    v = bar.values
    moves = v.upticks + v.downticks
    return {
        "spread_mean": v.spread_sum / v.tick_count,
        "spread_max": v.spread_max,
        "mid_close": v.mid,
        "micro_price": micro_price(v.bid, v.ask, v.bid_size, v.ask_size),
        "tick_count": float(v.tick_count),
        "tick_rate": v.tick_count * 1000.0 / bar.length_ms,
        "realized_vol": sqrt(v.sum_sq_returns),
        "tick_imbalance": (v.upticks - v.downticks) / moves if moves else None,
    }


__all__ = ["NAMES", "MicrostructureAccumulator", "micro_price", "microstructure_features"]
