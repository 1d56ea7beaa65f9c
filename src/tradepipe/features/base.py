"""The contract every streaming indicator set follows (R5.1, R5.2, R5.5, R10.3).

An indicator set is **one implementation** used two ways:

- live: ``update(open, high, low, close)`` once per closed bar, O(1) work and bounded memory,
  returns the current values (NaN while warming up);
- history: ``history(open, high, low, close)`` over whole arrays, for training sets and
  backtests, running the *same* numba step function in a compiled loop, so the values are
  identical to the live path's, bar for bar.

The math lives in a numba ``@njit`` step ``step(state, o, h, l, c, out)`` that advances a
float64 ``state`` array by one bar and writes the current values into ``out``. The class
keeps ``state`` and ``out``; ``snapshot()``/``restore()`` persist the state (a list of floats)
so a restarted service continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np


class IndicatorSet:
    """Base of a group of indicators computed together on each bar."""

    #: feature names, in the order of the values ``update`` returns
    names: ClassVar[tuple[str, ...]]

    def update(self, open_: float, high: float, low: float, close: float) -> np.ndarray:
        """Advance by one bar; the values after it (NaN where not yet defined)."""
        raise NotImplementedError

    def history(self, open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
        """Advance over whole series; an array of shape (len(close), len(names)).

        Starts from this set's current state (a fresh set: from nothing) and leaves the set
        in the state after the last bar, exactly as calling ``update`` per bar would.
        """
        raise NotImplementedError

    def snapshot(self) -> list[float]:
        raise NotImplementedError

    def restore(self, state: list[float]) -> None:
        raise NotImplementedError

    def as_features(self, values: np.ndarray) -> dict[str, float | None]:
        """Values as a FeaturesCalculated map: NaN (warming up, undefined) becomes None."""
        return {name: (None if v != v else float(v)) for name, v in zip(self.names, values.tolist())}


class NumbaIndicatorSet(IndicatorSet):
    """An IndicatorSet whose math is a numba ``step`` and a compiled ``history_loop`` that
    runs the same step over arrays; subclasses set ``names``, ``state_size`` and the two."""

    state_size: ClassVar[int]
    step: ClassVar[Callable]  # (state, open, high, low, close, out) -> None, wrapped in staticmethod
    history_loop: ClassVar[Callable]  # (state, opens, highs, lows, closes, out[n, k]) -> None

    def __init__(self) -> None:
        self.state = np.zeros(self.state_size)
        self._out = np.full(len(self.names), np.nan)

    def update(self, open_: float, high: float, low: float, close: float) -> np.ndarray:
        self.step(self.state, float(open_), float(high), float(low), float(close), self._out)
        return self._out.copy()  # callers may keep the values of several bars

    def history(self, open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
        series = [np.ascontiguousarray(x, dtype=np.float64) for x in (open_, high, low, close)]
        if len({x.shape for x in series}) != 1 or series[0].ndim != 1:
            raise ValueError("open, high, low and close must be 1-d arrays of one length")
        out = np.empty((series[0].shape[0], len(self.names)))
        self.history_loop(self.state, *series, out)
        if len(out):
            self._out[:] = out[-1]
        return out

    def snapshot(self) -> list[float]:
        return self.state.tolist()

    def restore(self, state: list[float]) -> None:
        if len(state) != self.state_size:
            raise ValueError(f"{type(self).__name__} state has {self.state_size} values, got {len(state)}")
        self.state = np.array(state, dtype=np.float64)
