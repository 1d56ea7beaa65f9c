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


# The math of one bar is split so that the per-bar part touches no array: ``_advance`` is a
# pure function of the state's scalars (a tuple), the close and the close leaving the SMA
# window; the ring buffer (in ``state``) is written and read by the caller, and the rare
# rebuild of the deviation sums from the window (``_rebuild``, not inlined) reads it. Both
# ``core_step`` and ``core_history`` run ``_bar``'s sequence; ``core_history`` keeps the
# scalars in locals for the whole loop (numba then does no reference counting per bar).
# error_model="numpy": float division follows IEEE (as TA-Lib's C does) instead of raising.
# The scalar-state tuple holds the state layout's slots BARS..MACD_SIGNAL_EMA, in order.


@njit(cache=True, error_model="numpy", inline="always")
def _bands(mean, variance):
    """Bollinger upper, lower and width around ``mean``."""
    band = (math.sqrt(variance) if variance > 0.0 else 0.0) * BB_DEVIATIONS
    upper = mean + band
    lower = mean - band
    return upper, lower, (upper - lower) / mean


@njit(cache=True, error_model="numpy", inline="always")
def _advance(s, close, leaving):
    """One finite close: the new scalar state, the ten values, and whether the deviation sums
    must be rebuilt from the window (then ``_rebuild`` fixes the sums and the bands)."""
    (bar, prev_close, avg_gain, avg_loss, window_sum, shift, dev_sum, dev_sum_sq, peak_sum_sq,
     bars_to_rebuild, ema, slow, fast, signal) = s
    nan = np.nan

    # RSI: sums of the first RSI_PERIOD gains/losses, then Wilder's smoothing
    rsi = nan
    if bar > 0:
        change = close - prev_close
        gain = avg_gain
        loss = avg_loss
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
        avg_gain = gain
        avg_loss = loss
    prev_close = close

    # SMA(20) and Bollinger(20, 2) share the window: a plain running sum for the mean (the
    # SMA), and for the deviation sums of (x - shift) and (x - shift)^2 with ``shift`` near
    # the window's values, so the variance does not cancel two ~price^2 quantities.
    window_sum = window_sum + close
    if bar == 0:
        shift = close
    deviation = close - shift
    dev_sum = dev_sum + deviation
    dev_sum_sq = dev_sum_sq + deviation * deviation
    # while warming up the sum of squares only grows, so the peak ends at the seed's total
    peak_sum_sq = max(peak_sum_sq, dev_sum_sq)
    rebuild = False
    if bar >= SMA_FIRST:
        mean = window_sum / SMA_PERIOD
        dev_mean = dev_sum * INV_BB_PERIOD
        variance = dev_sum_sq * INV_BB_PERIOD - dev_mean * dev_mean
        window_sum -= leaving
        deviation = leaving - shift
        dev_sum -= deviation
        dev_sum_sq -= deviation * deviation
        bars_to_rebuild = (bars_to_rebuild if bar > SMA_FIRST else REBUILD_EVERY) - 1
        # rounding has become comparable to the variance (or it is time): ``_rebuild``
        rebuild = variance < 1e-6 * (peak_sum_sq * INV_BB_PERIOD) or bars_to_rebuild <= 0
        out_sma = mean
        out_upper, out_lower, out_width = _bands(mean, variance)
    else:
        out_sma = nan
        out_upper = nan
        out_lower = nan
        out_width = nan

    # EMA(50); the slot holds the seed sum until the first value
    if bar < EMA_FIRST:
        ema = ema + close
        out_ema = nan
    else:
        ema = (ema + close) / EMA_PERIOD if bar == EMA_FIRST else ((close - ema) * K_EMA) + ema
        out_ema = ema

    # MACD(12, 26, 9): the EMA slots hold their seed sums until the first values
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
    if bar >= MACD_FIRST:
        out_macd = macd
        out_signal = signal
        out_hist = macd - signal
    else:
        out_macd = nan
        out_signal = nan
        out_hist = nan

    return (
        (bar + 1, prev_close, avg_gain, avg_loss, window_sum, shift, dev_sum, dev_sum_sq,
         peak_sum_sq, bars_to_rebuild, ema, slow, fast, signal),
        (rsi, out_macd, out_signal, out_hist, out_sma, out_ema, out_upper, out_sma, out_lower,
         out_width),
        rebuild,
    )


@njit(cache=True, error_model="numpy")
def _rebuild(state, s, values, close, leaving):
    """``_advance``'s result with the deviation sums recomputed from the window around its
    own mean, as TA-Lib's VAR does (bounded: one window), and the bands from them."""
    (bar, prev_close, avg_gain, avg_loss, window_sum, shift, dev_sum, dev_sum_sq, peak_sum_sq,
     bars_to_rebuild, ema, slow, fast, signal) = s
    oldest = bar % SMA_PERIOD  # ring slot of the value leaving the window (``bar`` is the count)
    bars_to_rebuild = float(REBUILD_EVERY)
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
    mean = values[OUT_SMA]
    upper, lower, width = _bands(mean, variance)
    return (
        (bar, prev_close, avg_gain, avg_loss, window_sum, shift, dev_sum, dev_sum_sq,
         peak_sum_sq, bars_to_rebuild, ema, slow, fast, signal),
        (values[0], values[1], values[2], values[3], mean, values[5], upper, mean, lower, width),
    )


@njit(cache=True, error_model="numpy", inline="always")
def _load(state):
    """The state's scalars as ``_advance``'s tuple (the bar counter as an integer)."""
    return (
        np.int64(state[BARS]), state[PREV_CLOSE], state[AVG_GAIN], state[AVG_LOSS],
        state[WINDOW_SUM], state[VAR_SHIFT], state[VAR_SUM], state[VAR_SUM_SQ],
        state[VAR_PEAK_SUM_SQ], state[VAR_BARS_TO_REBUILD], state[EMA], state[MACD_SLOW_EMA],
        state[MACD_FAST_EMA], state[MACD_SIGNAL_EMA],
    )


@njit(cache=True, error_model="numpy", inline="always")
def _store(state, s):
    """Write ``_advance``'s scalar tuple back into ``state``."""
    (state[BARS], state[PREV_CLOSE], state[AVG_GAIN], state[AVG_LOSS], state[WINDOW_SUM],
     state[VAR_SHIFT], state[VAR_SUM], state[VAR_SUM_SQ], state[VAR_PEAK_SUM_SQ],
     state[VAR_BARS_TO_REBUILD], state[EMA], state[MACD_SLOW_EMA], state[MACD_FAST_EMA],
     state[MACD_SIGNAL_EMA]) = s


@njit(_STEP_SIGNATURE, cache=True, error_model="numpy")
def core_step(state, open_, high, low, close, out):
    """Advance ``state`` by one bar's close and write the ten values into ``out``.

    Each output is written exactly once (a value, or NaN while warming up).
    """
    if not math.isfinite(close):
        for j in range(N_OUT):
            out[j] = np.nan
        return
    s = _load(state)
    # the same sequence as core_history's loop body
    bar = s[0]
    state[RING + bar % SMA_PERIOD] = close
    leaving = state[RING + (bar + 1) % SMA_PERIOD]
    s, values, rebuild = _advance(s, close, leaving)
    if rebuild:
        s, values = _rebuild(state, s, values, close, leaving)
    _store(state, s)
    (out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], out[8], out[9]) = values


@njit(_HISTORY_SIGNATURE, cache=True, error_model="numpy")
def core_history(state, open_, high, low, close, out):
    """``core_step`` over whole series (row i of ``out`` = the values after bar i), with the
    state's scalars held in locals for the whole loop."""
    s = _load(state)
    for i in range(close.shape[0]):
        c = close[i]
        if not math.isfinite(c):
            for j in range(N_OUT):
                out[i, j] = np.nan
            continue
        # the same sequence as core_step
        bar = s[0]
        state[RING + bar % SMA_PERIOD] = c
        leaving = state[RING + (bar + 1) % SMA_PERIOD]
        s, values, rebuild = _advance(s, c, leaving)
        if rebuild:
            s, values = _rebuild(state, s, values, c, leaving)
        (out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4], out[i, 5], out[i, 6], out[i, 7],
         out[i, 8], out[i, 9]) = values
    _store(state, s)


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
