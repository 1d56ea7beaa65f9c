"""A seeded synthetic tick generator (R4.1), for load tests and examples.

The model, chosen to look like the real OANDA EURUSD ticks in ``shared/data`` (median spread
about 1 pip, p99 a few pips, ~0.6 ticks/s, quiet hours 21:00-06:00 UTC):

* **Regimes**: a Markov chain over :data:`REGIMES` (calm, trending, volatile). An episode
  lasts a geometric number of ticks (mean ``Regime.mean_ticks``); the next regime is drawn
  from :data:`TRANSITIONS`. A trending episode drifts up or down (sign drawn per episode).
* **Mid price**: a random walk of the log mid in clock time, ``drift * dt + volatility *
  sqrt(dt) * N(0, 1)``, so it stays positive and a long gap moves it more than a short one.
* **Arrivals**: a Poisson process whose rate is the regime's ``tick_rate`` times the hour's
  :data:`HOURLY_ACTIVITY`. It is drawn exactly by a time change: exponential gaps in
  "activity time" are mapped back to clock time through the piecewise-linear cumulative
  activity of the day. Ticks are at least 1 ms apart (so none is a duplicate).
* **Spread**: lognormal around :data:`SPREAD_MEDIAN_PIPS`, times the regime's
  ``spread_factor`` and :data:`QUIET_SPREAD_FACTOR` in the quiet hours; at least one price
  step. Quotes are on the ``digits`` grid (5 for EURUSD: a step of 0.1 pip), so
  ``ask = bid + spread >= bid + step``: never crossed or locked.
* **Volume**: 0 (not provided, like OANDA's) for half of the ticks, else 1..10 lots.

Numbers are drawn in numpy blocks of :data:`BLOCK_TICKS` ticks: memory is constant and the
cost per tick small. The same seed gives the same ticks, and ``n`` only cuts the stream, so
a shorter run is a prefix of a longer one.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat
from typing import NamedTuple

import numpy as np

from tradepipe.sources.files import RawTick, iso_to_ms

BLOCK_TICKS = 65_536
DAY_MS = 86_400_000
SOURCE = "synthetic"


class Regime(NamedTuple):
    name: str
    volatility: float  # standard deviation of the log mid per sqrt(second)
    drift: float  # |drift| of the log mid per second; the sign is drawn per episode
    tick_rate: float  # ticks per second at hourly activity 1
    spread_factor: float
    mean_ticks: float  # mean episode length


REGIMES = (
    Regime("calm", 1.2e-5, 0.0, 0.65, 1.0, 20_000),
    Regime("trending", 1.8e-5, 5e-7, 0.9, 1.2, 10_000),
    Regime("volatile", 5.0e-5, 0.0, 2.0, 2.5, 4_000),
)
CALM, TRENDING, VOLATILE = range(len(REGIMES))
# Row = current regime, column = next regime when an episode ends (staying is the episode).
TRANSITIONS = np.array([
    [0.0, 0.6, 0.4],
    [0.7, 0.0, 0.3],
    [0.6, 0.4, 0.0],
])
QUIET_HOURS = frozenset((21, 22, 23, 0, 1, 2, 3, 4, 5))
# Relative tick rate per UTC hour: quiet Asian night, London, the London/New York overlap.
HOURLY_ACTIVITY = np.array([
    0.3 if hour in QUIET_HOURS else 1.5 if 12 <= hour < 16 else 1.0 if hour < 12 else 0.8
    for hour in range(24)
])
SPREAD_MEDIAN_PIPS = 1.0
SPREAD_LOG_SIGMA = 0.3
QUIET_SPREAD_FACTOR = 1.8
STEPS_PER_PIP = 10  # FX quotes one digit past the pip (a "pipette")
ZERO_VOLUME_SHARE = 0.5
MAX_VOLUME_LOTS = 10


class TickBlock(NamedTuple):
    """Consecutive synthetic ticks as arrays (``regime`` indexes :data:`REGIMES`)."""

    ts_ms: np.ndarray  # int64, strictly increasing
    bid: np.ndarray
    ask: np.ndarray
    volume: np.ndarray
    regime: np.ndarray  # int8


def synthetic_ticks(
    symbol: str = "EURUSD",
    n: int = 1_000_000,
    seed: int = 0,
    start: str = "2024-01-01T00:00:00Z",
    price: float = 1.10,
    digits: int = 5,
) -> Iterator[RawTick]:
    """``n`` synthetic ticks from ``start`` (ISO-8601), mid starting near ``price``, quoted
    with ``digits`` decimals; ``position`` counts ticks from 1 and ``source`` is
    ``"synthetic"``. See the module doc for the model."""
    position = 1
    for block in synthetic_blocks(n, seed, start, price, digits):
        count = len(block.ts_ms)
        yield from map(
            RawTick, repeat(symbol), block.ts_ms.tolist(), block.bid.tolist(), block.ask.tolist(),
            block.volume.tolist(), range(position, position + count), repeat(SOURCE),
        )
        position += count


def synthetic_blocks(
    n: int = 1_000_000,
    seed: int = 0,
    start: str = "2024-01-01T00:00:00Z",
    price: float = 1.10,
    digits: int = 5,
) -> Iterator[TickBlock]:
    """The ticks of :func:`synthetic_ticks` as numpy blocks (the last one cut to ``n``)."""
    if n < 0 or price <= 0:
        raise ValueError("n must be >= 0 and price > 0")
    generator = _Generator(seed, iso_to_ms(start), price, digits)
    remaining = n
    while remaining > 0:
        block = generator.next_block()
        if remaining < BLOCK_TICKS:
            block = TickBlock(*(array[:remaining] for array in block))
        remaining -= len(block.ts_ms)
        yield block


class _Generator:
    """The state carried from block to block."""

    def __init__(self, seed: int, start_ms: int, price: float, digits: int) -> None:
        # Separate streams for the regime chain and the per-tick noise: a change in how one is
        # drawn does not reshuffle the other.
        chain_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
        self.chain_rng = np.random.default_rng(chain_seed)
        self.rng = np.random.default_rng(noise_seed)
        self.scale = 10.0 ** digits  # price steps per unit of price
        self.day0_ms = start_ms - start_ms % DAY_MS
        # Cumulative activity (activity-seconds) at each hour boundary of a day.
        self.activity_at_hour = np.concatenate(([0.0], np.cumsum(HOURLY_ACTIVITY * 3600.0)))
        self.hour_seconds = np.arange(25) * 3600.0
        self.day_activity = self.activity_at_hour[-1]
        self.activity_time = float(np.interp((start_ms - self.day0_ms) / 1000.0, self.hour_seconds,
                                             self.activity_at_hour))
        self.clock_s = (start_ms - self.day0_ms) / 1000.0  # seconds since day0 of the last tick
        self.last_ts_ms = start_ms - 1
        self.log_mid = float(np.log(price))
        self.regime = CALM
        self.episode_left = self._episode_length(CALM)
        self.trend_sign = 1.0
        self.volatility = np.array([r.volatility for r in REGIMES])
        self.drift = np.array([r.drift for r in REGIMES])
        self.rate = np.array([r.tick_rate for r in REGIMES])
        self.spread_factor = np.array([r.spread_factor for r in REGIMES])

    def _episode_length(self, regime: int) -> int:
        return int(self.chain_rng.geometric(1.0 / REGIMES[regime].mean_ticks))

    def _regimes(self) -> tuple[np.ndarray, np.ndarray]:
        """Regime and signed drift of each tick of the next block."""
        regimes = np.empty(BLOCK_TICKS, np.int8)
        signs = np.empty(BLOCK_TICKS)
        filled = 0
        while filled < BLOCK_TICKS:
            if self.episode_left == 0:
                self.regime = int(self.chain_rng.choice(len(REGIMES), p=TRANSITIONS[self.regime]))
                self.episode_left = self._episode_length(self.regime)
                self.trend_sign = 1.0 if self.chain_rng.random() < 0.5 else -1.0
            take = min(self.episode_left, BLOCK_TICKS - filled)
            regimes[filled:filled + take] = self.regime
            signs[filled:filled + take] = self.trend_sign
            filled += take
            self.episode_left -= take
        return regimes, signs * self.drift[regimes]

    def _clock(self, regimes: np.ndarray) -> np.ndarray:
        """Seconds since day0 of each tick: exponential gaps in activity time, mapped back."""
        gaps = self.rng.standard_exponential(BLOCK_TICKS) / self.rate[regimes]
        activity = self.activity_time + np.cumsum(gaps)
        self.activity_time = float(activity[-1])
        days, within = np.divmod(activity, self.day_activity)
        return days * 86_400.0 + np.interp(within, self.activity_at_hour, self.hour_seconds)

    def next_block(self) -> TickBlock:
        rng = self.rng
        regimes, drift = self._regimes()
        clock = self._clock(regimes)
        dt = np.diff(clock, prepend=self.clock_s)
        self.clock_s = float(clock[-1])

        steps = drift * dt + self.volatility[regimes] * np.sqrt(dt) * rng.standard_normal(BLOCK_TICKS)
        log_mid = self.log_mid + np.cumsum(steps)
        self.log_mid = float(log_mid[-1])

        hours = (clock // 3600.0).astype(np.int64) % 24
        quiet = np.isin(hours, tuple(QUIET_HOURS))
        spread_pips = (SPREAD_MEDIAN_PIPS * np.exp(SPREAD_LOG_SIGMA * rng.standard_normal(BLOCK_TICKS))
                       * self.spread_factor[regimes] * np.where(quiet, QUIET_SPREAD_FACTOR, 1.0))
        spread_steps = np.maximum(1.0, np.rint(spread_pips * STEPS_PER_PIP))
        bid_steps = np.maximum(1.0, np.rint(np.exp(log_mid) * self.scale - spread_steps / 2))
        # integer steps / 10**digits is the double nearest the decimal quote (1.10001, not
        # 1.1000100000000001), as a CSV reader would produce.
        bid = bid_steps / self.scale
        ask = (bid_steps + spread_steps) / self.scale

        volume = np.where(rng.random(BLOCK_TICKS) < ZERO_VOLUME_SHARE, 0.0,
                          rng.integers(1, MAX_VOLUME_LOTS + 1, BLOCK_TICKS).astype(np.float64))

        # At least 1 ms apart: ts_i = max(last + 1, max_{j<=i}(raw_j - j)) + i.
        index = np.arange(BLOCK_TICKS)
        raw_ms = self.day0_ms + np.floor(clock * 1000.0).astype(np.int64)
        ts_ms = np.maximum(np.maximum.accumulate(raw_ms - index), self.last_ts_ms + 1) + index
        self.last_ts_ms = int(ts_ms[-1])
        return TickBlock(ts_ms, bid, ask, volume, regimes)


__all__ = ["REGIMES", "TRANSITIONS", "Regime", "TickBlock", "synthetic_blocks", "synthetic_ticks"]
