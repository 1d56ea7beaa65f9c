"""The feature-engineering indicators (R5.1): RSI(14), MACD(12, 26, 9), SMA(20), EMA(50) and
Bollinger bands (20, 2) on the close, as one fused numba step.

The values equal TA-Lib's (``talib.RSI``, ``MACD``, ``SMA``, ``EMA``, ``BBANDS(matype=0)``, TA-Lib
0.8) on the same series to ~1e-14 relative, most of them bit for bit, because the step performs
TA-Lib's floating-point operations in TA-Lib's order:

- EMA (and MACD's EMAs): seeded with the plain mean of its first ``period`` inputs (summed in
  order from 0.0), then ``ema = (x - ema) * k + ema`` with ``k = 2 / (period + 1)``.
- MACD: TA-Lib starts both EMAs at the slow EMA's first value (bar 25): the slow EMA is seeded
  with bars 0..25, the fast one with bars 14..25 only. The signal EMA is seeded with the mean
  of the first 9 MACD values (bars 25..33); TA-Lib publishes MACD, signal and histogram only
  from bar 33, when all three exist.
- RSI: Wilder smoothing (``avg * 13 + change`` then ``/ 14``), seeded with the mean gain/loss of
  the first 14 changes; the value is ``100 * gain / (gain + loss)``, 0 when nothing moved.
- SMA: a running sum that adds the newest close, divides, then removes the close leaving the
  window.
- Bollinger: middle = the SMA; the standard deviation (population) comes from TA-Lib's
  cancellation-free VAR: running sums of ``x - shift`` and ``(x - shift)^2`` with ``shift`` near
  the window's values, rebuilt from the window (20 values) when rounding becomes comparable to
  the variance and at least every 640 bars. ``bb_width = (upper - lower) / middle`` is ours
  (TA-Lib has none).

State (float64, fixed size): a bar counter, RSI's previous close and averages, the running
sums, the EMA values and a 20-close ring buffer. Each update does bounded work: O(1), plus a
20-value rebuild of the deviation sums at most once per bar.

A bar whose close is NaN or infinite is skipped: its values are all NaN and the state is left
untouched, so the following bars get exactly the values of the series without that bar.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tradepipe.features.base import NumbaIndicatorSet

RSI_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
SMA_PERIOD = 20
EMA_PERIOD = 50
BB_PERIOD, BB_DEVIATIONS = 20, 2.0

INV_BB_PERIOD = 1.0 / BB_PERIOD
#: the deviation sums are rebuilt from the window at least this often (TA-Lib's VAR: 32 windows)
REBUILD_EVERY = 32 * BB_PERIOD

# bars before the first value of each output (TA-Lib's lookbacks)
RSI_FIRST = RSI_PERIOD
MACD_SLOW_FIRST = MACD_SLOW - 1  # first bar with both EMAs
MACD_FAST_SEED_FROM = MACD_SLOW - MACD_FAST  # the fast EMA's seed ends where the slow one's does
MACD_FIRST = MACD_SLOW_FIRST + MACD_SIGNAL - 1
SMA_FIRST = SMA_PERIOD - 1
EMA_FIRST = EMA_PERIOD - 1

# smoothing factors computed as TA-Lib's PER_TO_K does
K_FAST = 2.0 / (MACD_FAST + 1)
K_SLOW = 2.0 / (MACD_SLOW + 1)
K_SIGNAL = 2.0 / (MACD_SIGNAL + 1)
K_EMA = 2.0 / (EMA_PERIOD + 1)

# state layout; the EMA slots hold the running seed sum until the EMA's first value
BARS = 0
PREV_CLOSE = 1
AVG_GAIN = 2
AVG_LOSS = 3
WINDOW_SUM = 4
VAR_SHIFT = 5
VAR_SUM = 6
VAR_SUM_SQ = 7
VAR_PEAK_SUM_SQ = 8
VAR_BARS_TO_REBUILD = 9
EMA = 10
MACD_SLOW_EMA = 11
MACD_FAST_EMA = 12
MACD_SIGNAL_EMA = 13
RING = 14
STATE_SIZE = RING + SMA_PERIOD

# output columns, in ``CoreIndicators.names`` order
OUT_RSI, OUT_MACD, OUT_SIGNAL, OUT_HIST, OUT_SMA, OUT_EMA = 0, 1, 2, 3, 4, 5
OUT_BB_UPPER, OUT_BB_MIDDLE, OUT_BB_LOWER, OUT_BB_WIDTH = 6, 7, 8, 9
N_OUT = 10

_STEP_SIGNATURE = "void(float64[::1], float64, float64, float64, float64, float64[::1])"
_HISTORY_SIGNATURE = (
    "void(float64[::1], float64[::1], float64[::1], float64[::1], float64[::1], float64[:, ::1])"
)


@njit("UniTuple(float64, 3)(float64[::1], int64, float64)", cache=True, error_model="numpy")
def _window_deviation_sums(state, oldest, shift):
    """Sum of (x - shift), sum of (x - shift)^2 and the variance over the ring buffer's
    window, oldest value first."""
    dev_sum = 0.0
    dev_sum_sq = 0.0
    for j in range(SMA_PERIOD):
        deviation = state[RING + (oldest + j) % SMA_PERIOD] - shift
        dev_sum += deviation
        dev_sum_sq += deviation * deviation
    dev_mean = dev_sum * INV_BB_PERIOD
    return dev_sum, dev_sum_sq, dev_sum_sq * INV_BB_PERIOD - dev_mean * dev_mean


# error_model="numpy": float division follows IEEE (as TA-Lib's C does) instead of raising;
# inline="always": history's loop gets the body itself, not a call per bar
@njit(_STEP_SIGNATURE, cache=True, error_model="numpy", inline="always")
def core_step(state, open_, high, low, close, out):
    """Advance ``state`` by one bar's close and write the ten values into ``out``.

    Each output is written exactly once (a value, or NaN while warming up).
    """
    nan = np.nan
    if not math.isfinite(close):
        for j in range(N_OUT):
            out[j] = nan
    else:
        bar = np.int64(state[BARS])
        state[BARS] = bar + 1

        # RSI: sums of the first RSI_PERIOD gains/losses, then Wilder's smoothing
        rsi = nan
        if bar > 0:
            change = close - state[PREV_CLOSE]
            gain = state[AVG_GAIN]
            loss = state[AVG_LOSS]
            if bar > RSI_FIRST:
                loss *= RSI_PERIOD - 1
                gain *= RSI_PERIOD - 1
            if change < 0:
                loss -= change
            else:
                gain += change
            if bar >= RSI_FIRST:
                loss /= RSI_PERIOD
                gain /= RSI_PERIOD
                total = gain + loss
                rsi = 100.0 * (gain / total) if total > 0.0 else 0.0
            state[AVG_GAIN] = gain
            state[AVG_LOSS] = loss
        state[PREV_CLOSE] = close
        out[OUT_RSI] = rsi

        # SMA(20) and Bollinger(20, 2) share the window: a plain running sum for the mean (the
        # SMA), and for the deviation sums of (x - shift) and (x - shift)^2 with ``shift`` near
        # the window's values, so the variance does not cancel two ~price^2 quantities.
        state[RING + bar % SMA_PERIOD] = close
        window_sum = state[WINDOW_SUM] + close
        if bar == 0:
            state[VAR_SHIFT] = close
        shift = state[VAR_SHIFT]
        deviation = close - shift
        dev_sum = state[VAR_SUM] + deviation
        dev_sum_sq = state[VAR_SUM_SQ] + deviation * deviation
        # while warming up the sum of squares only grows, so the peak ends at the seed's total
        peak_sum_sq = max(state[VAR_PEAK_SUM_SQ], dev_sum_sq)
        if bar >= SMA_FIRST:
            mean = window_sum / SMA_PERIOD
            dev_mean = dev_sum * INV_BB_PERIOD
            variance = dev_sum_sq * INV_BB_PERIOD - dev_mean * dev_mean
            oldest = (bar + 1) % SMA_PERIOD  # ring slot of the value leaving the window
            leaving = state[RING + oldest]
            window_sum -= leaving
            deviation = leaving - shift
            dev_sum -= deviation
            dev_sum_sq -= deviation * deviation
            bars_to_rebuild = (state[VAR_BARS_TO_REBUILD] if bar > SMA_FIRST else REBUILD_EVERY) - 1
            if variance < 1e-6 * (peak_sum_sq * INV_BB_PERIOD) or bars_to_rebuild <= 0:
                # rounding has become comparable to the variance (or it is time): recompute the
                # window's sums around its own mean, as TA-Lib's VAR does (bounded: one window)
                bars_to_rebuild = REBUILD_EVERY
                total = 0.0
                for j in range(SMA_PERIOD):
                    total += state[RING + (oldest + j) % SMA_PERIOD]
                shift = total * INV_BB_PERIOD
                dev_sum, dev_sum_sq, variance = _window_deviation_sums(state, oldest, shift)
                if variance < 1e-6 * (dev_sum_sq * INV_BB_PERIOD):
                    # flat to within the mean's rounding: anchor on one of the window's values
                    shift = close
                    dev_sum, dev_sum_sq, variance = _window_deviation_sums(state, oldest, shift)
                peak_sum_sq = dev_sum_sq
                if variance < 1e-12 * (dev_sum_sq * INV_BB_PERIOD):
                    variance = 0.0
                deviation = leaving - shift
                dev_sum -= deviation
                dev_sum_sq -= deviation * deviation
            state[VAR_BARS_TO_REBUILD] = bars_to_rebuild
            band = (math.sqrt(variance) if variance > 0.0 else 0.0) * BB_DEVIATIONS
            upper = mean + band
            lower = mean - band
            out[OUT_SMA] = mean
            out[OUT_BB_UPPER] = upper
            out[OUT_BB_MIDDLE] = mean
            out[OUT_BB_LOWER] = lower
            out[OUT_BB_WIDTH] = (upper - lower) / mean
        else:
            out[OUT_SMA] = nan
            out[OUT_BB_UPPER] = nan
            out[OUT_BB_MIDDLE] = nan
            out[OUT_BB_LOWER] = nan
            out[OUT_BB_WIDTH] = nan
        state[WINDOW_SUM] = window_sum
        state[VAR_SHIFT] = shift
        state[VAR_SUM] = dev_sum
        state[VAR_SUM_SQ] = dev_sum_sq
        state[VAR_PEAK_SUM_SQ] = peak_sum_sq

        # EMA(50); the slot holds the seed sum until the first value
        ema = state[EMA]
        if bar < EMA_FIRST:
            state[EMA] = ema + close
            out[OUT_EMA] = nan
        else:
            ema = (ema + close) / EMA_PERIOD if bar == EMA_FIRST else ((close - ema) * K_EMA) + ema
            state[EMA] = ema
            out[OUT_EMA] = ema

        # MACD(12, 26, 9): the EMA slots hold their seed sums until the first values
        slow = state[MACD_SLOW_EMA]
        fast = state[MACD_FAST_EMA]
        signal = state[MACD_SIGNAL_EMA]
        macd = nan
        if bar < MACD_SLOW_FIRST:
            slow += close
            if bar >= MACD_FAST_SEED_FROM:
                fast += close
        else:
            if bar == MACD_SLOW_FIRST:
                slow = (slow + close) / MACD_SLOW
                fast = (fast + close) / MACD_FAST
            else:
                slow = ((close - slow) * K_SLOW) + slow
                fast = ((close - fast) * K_FAST) + fast
            macd = fast - slow
            if bar < MACD_FIRST:
                signal += macd
            elif bar == MACD_FIRST:
                signal = (signal + macd) / MACD_SIGNAL
            else:
                signal = ((macd - signal) * K_SIGNAL) + signal
        state[MACD_SLOW_EMA] = slow
        state[MACD_FAST_EMA] = fast
        state[MACD_SIGNAL_EMA] = signal
        if bar >= MACD_FIRST:
            out[OUT_MACD] = macd
            out[OUT_SIGNAL] = signal
            out[OUT_HIST] = macd - signal
        else:
            out[OUT_MACD] = nan
            out[OUT_SIGNAL] = nan
            out[OUT_HIST] = nan


@njit(_HISTORY_SIGNATURE, cache=True, error_model="numpy")
def core_history(state, open_, high, low, close, out):
    """``core_step`` over whole series (row i of ``out`` = the values after bar i)."""
    values = np.empty(N_OUT)  # one scratch row: a view of ``out`` per bar costs more than the copy
    for i in range(close.shape[0]):
        core_step(state, open_[i], high[i], low[i], close[i], values)
        for j in range(N_OUT):
            out[i, j] = values[j]


#: the compiled step without the dispatcher's per-call argument type resolution (the signature
#: is fixed): ~0.3 us less per live update
_compiled_step = core_step.overloads[core_step.signatures[0]].entry_point


class CoreIndicators(NumbaIndicatorSet):
    names = (
        "rsi", "macd", "macd_signal", "macd_hist", "sma_20", "ema_50",
        "bb_upper", "bb_middle", "bb_lower", "bb_width",
    )

    state_size = STATE_SIZE
    step = staticmethod(_compiled_step)
    history_loop = staticmethod(core_history)
