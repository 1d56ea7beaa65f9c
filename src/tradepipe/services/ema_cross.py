"""EMA-cross signal service: the classic fast/slow moving-average cross, in place of the models.

It exists for R10.2: the backtest that does the same work as NautilusTrader's EMA-cross example
(1-minute bars aggregated from quote ticks, EMA(10) against EMA(20) of the close) runs the
pipeline with this service where the model services and the ensemble would be, so the
validator, the trading engine and everything after them see the usual TradingSignalGenerated.

On each BarClosed of its timeframe the service updates a fast and a slow EMA of the bar's mid
close, per symbol. The fast EMA is *above* or *below* the slow one (equal keeps the previous
side); a change of side is a cross: BUY when the fast EMA crosses above the slow, SELL when
it crosses below, nothing otherwise. The side first seen once both EMAs have values is
remembered but is not a cross, so the first signal is the first real cross.

The EMAs follow TA-Lib's convention, the one ``tradepipe.features.core`` computes its EMA(50)
and MACD averages with: seeded with the plain mean of the first ``period`` closes (summed in
order from 0.0), then ``ema = (x - ema) * k + ema`` with ``k = 2 / (period + 1)``. (core.py
fuses its EMAs into one fixed-period numba step, so the recurrence is restated here, per bar,
for any period; tests check both against ``talib.EMA``.)

Ticks are the bulk of the market-data topic: the in-process kernel does not hand them to this
service at all (``accepts``), and a bus runner's are dropped at once by a type check.
"""

from __future__ import annotations

from typing import Any

from tradepipe.events import MARKET_DATA, Event
from tradepipe.events.types import BarClosed, Contribution, TradingSignalGenerated
from tradepipe.runtime.service import Context, Service

ABOVE, BELOW, UNKNOWN = 1, -1, 0


class StreamingEma:
    """EMA(``period``) of a stream, TA-Lib's seeding; ``value`` is None while warming up."""

    __slots__ = ("period", "k", "count", "_level")

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError(f"EMA period must be >= 1, got {period}")
        self.period = period
        self.k = 2.0 / (period + 1)
        self.count = 0
        self._level = 0.0  # the running seed sum until ``count`` reaches ``period``, then the EMA

    @property
    def value(self) -> float | None:
        return self._level if self.count >= self.period else None

    def update(self, x: float) -> float | None:
        count = self.count = self.count + 1
        if count < self.period:
            self._level += x
            return None
        if count == self.period:
            self._level = (self._level + x) / self.period
        else:
            self._level = (x - self._level) * self.k + self._level
        return self._level

    def snapshot(self) -> list[float]:
        return [self.count, self._level]

    def restore(self, state: list[float]) -> None:
        self.count, self._level = int(state[0]), float(state[1])


class _SymbolCross:
    """One symbol's fast and slow EMA and the side the fast one was last on."""

    __slots__ = ("fast", "slow", "side")

    def __init__(self, fast: int, slow: int) -> None:
        self.fast = StreamingEma(fast)
        self.slow = StreamingEma(slow)
        self.side = UNKNOWN

    def update(self, close: float) -> int:
        """Take one close; ABOVE or BELOW when it made the fast EMA cross, else UNKNOWN."""
        fast = self.fast.update(close)
        slow = self.slow.update(close)
        if fast is None or slow is None or fast == slow:
            return UNKNOWN
        side = ABOVE if fast > slow else BELOW
        crossed = self.side != UNKNOWN and side != self.side
        self.side = side
        return side if crossed else UNKNOWN


class EmaCrossSignal(Service):
    name = "ema-cross"
    inputs = (MARKET_DATA,)
    accepts = (BarClosed,)  # the kernel does not even call it for ticks

    def __init__(self, timeframe: str = "1m", fast: int = 10, slow: int = 20) -> None:
        if not 1 <= fast < slow:
            raise ValueError(f"need 1 <= fast < slow, got fast={fast}, slow={slow}")
        self.timeframe = timeframe
        self.fast = fast
        self.slow = slow
        self.model = f"EMA({fast}/{slow}) cross"
        self._symbols: dict[str, _SymbolCross] = {}

    def handle(self, event: Event, ctx: Context) -> tuple[Event, ...]:
        if type(event) is not BarClosed or event.timeframe != self.timeframe:
            return ()  # ticks, and bars of other timeframes
        close = event.mid.close
        if close - close != 0.0:  # NaN or inf: would poison both EMAs for good
            return ()
        symbol = event.symbol or ""
        cross = self._symbols.get(symbol)
        if cross is None:
            cross = self._symbols[symbol] = _SymbolCross(self.fast, self.slow)
        side = cross.update(close)
        if side == UNKNOWN:
            return ()
        direction = "BUY" if side == ABOVE else "SELL"
        return (ctx.emit(
            TradingSignalGenerated,
            direction=direction,
            confidence=1.0,
            timeframe=self.timeframe,
            contributors=[Contribution(model=self.model, direction=direction, confidence=1.0,
                                       weight=1.0, producer=self.name)],
            bar_time=event.bar_time,
            price=close,
        ),)

    def snapshot(self) -> dict[str, Any]:
        return {
            symbol: [cross.fast.snapshot(), cross.slow.snapshot(), cross.side]
            for symbol, cross in self._symbols.items()
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._symbols = {}
        for symbol, (fast, slow, side) in state.items():
            cross = self._symbols[symbol] = _SymbolCross(self.fast, self.slow)
            cross.fast.restore(fast)
            cross.slow.restore(slow)
            cross.side = side


__all__ = ["EmaCrossSignal", "StreamingEma"]
