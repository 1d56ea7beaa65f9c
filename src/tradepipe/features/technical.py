"""Technical analysis indicators (R5.2): ATR, Stochastic, ADX, log returns, candlestick patterns.

One fused numba step advances all of them by one bar, replicating TA-Lib's arithmetic (seeding,
rolling-sum order, comparisons) so the values equal ``talib.STOCH(14, 3, 3)`` (SMA slowing),
``talib.ADX(14)``, ``talib.CDLENGULFING``, ``talib.CDLDOJI`` and ``talib.CDLHAMMER`` bit for bit
on the same series from its first bar, and ``talib.ATR(14)`` to ~1e-15 relative (same seeding and
Wilder update; TA-Lib 0.8's build rounds some updates one ulp differently). The candle rules use TA-Lib's default
candle settings (BodyDoji: body <= 10% of the mean high-low range of the previous 10 candles;
BodyShort: mean body of 10; ShadowLong: the candle's own body; ShadowVeryShort: 10% of the mean
range of 10; Near: 20% of the mean range of 5), each average kept as its own rolling sum, seeded
and updated in the same order as the TA-Lib function that uses it, because the rules compare
with ``<``/``<=`` and a last-bit difference in a sum could flip a pattern.

Memory is bounded: everything lives in one float64 state array of :data:`STATE_SIZE`, including
a ring of the last 16 bars (the stochastic's 14-bar high/low window, the candles' previous bars
and the 15-bar return's close). Work per bar is constant: the only loop is the fixed 14-bar
high/low scan.

A bar with a non-finite open, high, low or close yields NaN for every value of that bar and does
not advance the state: the next valid bar continues as if the bad bar had never arrived.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tradepipe.features.base import NumbaIndicatorSet

PERIOD = 14  # ATR, ADX and the stochastic's %K window
SLOWING = 3  # stochastic slow %K and %D SMA periods
RING = 16  # bars kept: enough for the 15-bar return (and the 14-bar high/low window)
RETURN_HORIZONS = (1, 5, 15)

# TA-Lib default candle settings used by the three patterns: (average period, factor)
BODY_DOJI_PERIOD, BODY_DOJI_FACTOR = 10, 0.1  # high-low range
BODY_SHORT_PERIOD = 10  # real body, factor 1
SHADOW_VERY_SHORT_PERIOD, SHADOW_VERY_SHORT_FACTOR = 10, 0.1  # high-low range
NEAR_PERIOD, NEAR_FACTOR = 5, 0.2  # high-low range

# first bar index with a defined value (TA-Lib's lookbacks)
ATR_FIRST = PERIOD
STOCH_FIRST = PERIOD - 1 + 2 * (SLOWING - 1)
ADX_FIRST = 2 * PERIOD - 1
ENGULFING_FIRST = 2
DOJI_FIRST = BODY_DOJI_PERIOD
HAMMER_FIRST = max(BODY_SHORT_PERIOD, SHADOW_VERY_SHORT_PERIOD, NEAR_PERIOD) + 1

# state layout
N_BARS = 0  # valid bars seen
ATR = 1  # sum of the first 14 true ranges, then the Wilder-smoothed ATR
MINUS_DM = 2  # ADX: smoothed -DM14
PLUS_DM = 3  # ADX: smoothed +DM14
TR_SUM = 4  # ADX: smoothed TR14
DX_SUM = 5  # ADX: sum of the first 14 DX
ADX = 6  # ADX: Wilder-smoothed DX
FAST_K_SUM = 7  # rolling sum for slow %K
SLOW_K_SUM = 8  # rolling sum for slow %D
DOJI_RANGE_SUM = 9  # CDLDOJI: BodyDoji total (high-low ranges)
HAMMER_BODY_SUM = 10  # CDLHAMMER: BodyShort total (real bodies)
HAMMER_RANGE_SUM = 11  # CDLHAMMER: ShadowVeryShort total (high-low ranges)
HAMMER_NEAR_SUM = 12  # CDLHAMMER: Near total (high-low ranges, one bar earlier)
FAST_K_RING = 13  # last 3 fast %K
SLOW_K_RING = FAST_K_RING + SLOWING  # last 3 slow %K
OPEN_RING = SLOW_K_RING + SLOWING
HIGH_RING = OPEN_RING + RING
LOW_RING = HIGH_RING + RING
CLOSE_RING = LOW_RING + RING
LOG_CLOSE_RING = CLOSE_RING + RING
STATE_SIZE = LOG_CLOSE_RING + RING

TA_IS_ZERO = 1e-8  # TA-Lib treats |v| < 1e-8 as zero in ADX's divisions


@njit(cache=True, inline="always")
def _real_body(o: float, c: float) -> float:
    return abs(c - o)


@njit(cache=True)
def technical_step(state: np.ndarray, o: float, h: float, l: float, c: float, out: np.ndarray) -> None:
    """Advance ``state`` by one bar and write the 10 values (see ``TechnicalIndicators.names``)."""
    out[:] = np.nan
    if not (np.isfinite(o) and np.isfinite(h) and np.isfinite(l) and np.isfinite(c)):
        return
    k = int(state[N_BARS])  # this bar's index
    slot = k % RING
    state[OPEN_RING + slot] = o
    state[HIGH_RING + slot] = h
    state[LOW_RING + slot] = l
    state[CLOSE_RING + slot] = c
    log_c = np.log(c)
    state[LOG_CLOSE_RING + slot] = log_c
    state[N_BARS] = k + 1

    # log returns
    if k >= 1:
        out[4] = log_c - state[LOG_CLOSE_RING + (k - 1) % RING]
    if k >= 5:
        out[5] = log_c - state[LOG_CLOSE_RING + (k - 5) % RING]
    if k >= 15:
        out[6] = log_c - state[LOG_CLOSE_RING + (k - 15) % RING]

    if k >= 1:
        prev = (k - 1) % RING
        prev_h = state[HIGH_RING + prev]
        prev_l = state[LOW_RING + prev]
        prev_c = state[CLOSE_RING + prev]
        # true range, with TA-Lib's comparison order
        tr = h - l
        d = abs(prev_c - h)
        if d > tr:
            tr = d
        d = abs(prev_c - l)
        if d > tr:
            tr = d

        # ATR: the mean of the first 14 true ranges, then Wilder's smoothing
        if k < ATR_FIRST:
            state[ATR] += tr
        elif k == ATR_FIRST:
            state[ATR] = (state[ATR] + tr) / PERIOD
            out[0] = state[ATR]
        else:
            atr = state[ATR] * (PERIOD - 1)
            atr += tr
            atr /= PERIOD
            state[ATR] = atr
            out[0] = atr

        # ADX: directional movement of this bar
        diff_p = h - prev_h
        diff_m = prev_l - l
        if k >= PERIOD:
            state[MINUS_DM] -= state[MINUS_DM] / PERIOD
            state[PLUS_DM] -= state[PLUS_DM] / PERIOD
        if diff_m > 0 and diff_p < diff_m:
            state[MINUS_DM] += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            state[PLUS_DM] += diff_p
        if k < PERIOD:
            state[TR_SUM] += tr
        else:
            tr_sum = state[TR_SUM] - (state[TR_SUM] / PERIOD) + tr
            state[TR_SUM] = tr_sum
            # as TA-Lib: no DX (and no ADX step) when the range or the DI sum is "zero"
            if not (-TA_IS_ZERO < tr_sum < TA_IS_ZERO):
                minus_di = 100.0 * (state[MINUS_DM] / tr_sum)
                plus_di = 100.0 * (state[PLUS_DM] / tr_sum)
                di_sum = minus_di + plus_di
                if not (-TA_IS_ZERO < di_sum < TA_IS_ZERO):
                    dx = 100.0 * (abs(minus_di - plus_di) / di_sum)
                    if k <= ADX_FIRST:
                        state[DX_SUM] += dx
                    else:
                        state[ADX] = ((state[ADX] * (PERIOD - 1)) + dx) / PERIOD
            if k == ADX_FIRST:
                state[ADX] = state[DX_SUM] / PERIOD
            if k >= ADX_FIRST:
                out[3] = state[ADX]

    # Stochastic: fast %K over the last 14 bars, then two 3-bar SMAs
    if k >= PERIOD - 1:
        lowest = l
        highest = h
        for back in range(1, PERIOD):
            s = (k - back) % RING
            if state[LOW_RING + s] < lowest:
                lowest = state[LOW_RING + s]
            if state[HIGH_RING + s] > highest:
                highest = state[HIGH_RING + s]
        spread = highest - lowest
        # TA-Lib's operation order (divide, then scale), so the SMAs below see identical inputs
        fast_k = (c - lowest) / spread * 100.0 if spread != 0.0 else 0.0
        j = k - (PERIOD - 1)  # index of this fast %K
        state[FAST_K_RING + j % SLOWING] = fast_k
        state[FAST_K_SUM] += fast_k
        if j >= SLOWING - 1:
            slow_k = state[FAST_K_SUM] / SLOWING
            state[FAST_K_SUM] -= state[FAST_K_RING + (j + 1) % SLOWING]  # fast %K j-2 leaves
            m = j - (SLOWING - 1)  # index of this slow %K
            state[SLOW_K_RING + m % SLOWING] = slow_k
            state[SLOW_K_SUM] += slow_k
            if m >= SLOWING - 1:
                out[1] = slow_k
                out[2] = state[SLOW_K_SUM] / SLOWING
                state[SLOW_K_SUM] -= state[SLOW_K_RING + (m + 1) % SLOWING]

    hl = h - l
    body = _real_body(o, c)
    white = c >= o

    # CDLENGULFING
    if k >= ENGULFING_FIRST:
        prev = (k - 1) % RING
        prev_o = state[OPEN_RING + prev]
        prev_c = state[CLOSE_RING + prev]
        prev_white = prev_c >= prev_o
        engulfs = False
        if white and not prev_white:
            engulfs = (c >= prev_o and o < prev_c) or (c > prev_o and o <= prev_c)
        elif not white and prev_white:
            engulfs = (o >= prev_c and c < prev_o) or (o > prev_c and c <= prev_o)
        sign = 1.0 if white else -1.0
        if not engulfs:
            out[7] = 0.0
        elif o != prev_c and c != prev_o:
            out[7] = 100.0 * sign
        else:
            out[7] = 80.0 * sign  # TA-Lib's weaker signal when an open equals the other close

    # CDLDOJI: range total over the previous 10 bars, excluding this one
    if k < DOJI_FIRST:
        state[DOJI_RANGE_SUM] += hl
    else:
        average = BODY_DOJI_FACTOR * (state[DOJI_RANGE_SUM] / BODY_DOJI_PERIOD)
        out[8] = 100.0 if body <= average else 0.0
        old = (k - BODY_DOJI_PERIOD) % RING
        state[DOJI_RANGE_SUM] += hl - (state[HIGH_RING + old] - state[LOW_RING + old])

    # CDLHAMMER: body and range totals over bars 1..10 before the first output, near total over
    # the 5 bars before the previous one
    if k >= HAMMER_FIRST:
        prev = (k - 1) % RING
        prev_l = state[LOW_RING + prev]
        upper_shadow = h - (c if white else o)
        lower_shadow = (o if white else c) - l
        near = NEAR_FACTOR * (state[HAMMER_NEAR_SUM] / NEAR_PERIOD)
        hammer = (
            body < state[HAMMER_BODY_SUM] / BODY_SHORT_PERIOD
            and lower_shadow > body
            and upper_shadow < SHADOW_VERY_SHORT_FACTOR * (state[HAMMER_RANGE_SUM] / SHADOW_VERY_SHORT_PERIOD)
            and min(c, o) <= prev_l + near
        )
        out[9] = 100.0 if hammer else 0.0
        old = (k - BODY_SHORT_PERIOD) % RING
        state[HAMMER_BODY_SUM] += body - _real_body(state[OPEN_RING + old], state[CLOSE_RING + old])
        old = (k - SHADOW_VERY_SHORT_PERIOD) % RING
        state[HAMMER_RANGE_SUM] += hl - (state[HIGH_RING + old] - state[LOW_RING + old])
        old = (k - 1 - NEAR_PERIOD) % RING
        prev_range = state[HIGH_RING + prev] - prev_l
        state[HAMMER_NEAR_SUM] += prev_range - (state[HIGH_RING + old] - state[LOW_RING + old])
    else:
        if k >= HAMMER_FIRST - BODY_SHORT_PERIOD:
            state[HAMMER_BODY_SUM] += body
        if k >= HAMMER_FIRST - SHADOW_VERY_SHORT_PERIOD:
            state[HAMMER_RANGE_SUM] += hl
        if HAMMER_FIRST - 1 - NEAR_PERIOD <= k < HAMMER_FIRST - 1:
            state[HAMMER_NEAR_SUM] += hl


@njit(cache=True)
def technical_history(
    state: np.ndarray, o: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray, out: np.ndarray
) -> None:
    for i in range(c.shape[0]):
        technical_step(state, o[i], h[i], l[i], c[i], out[i])


class TechnicalIndicators(NumbaIndicatorSet):
    """ATR(14), Stochastic(14, 3, 3) slow %K/%D, ADX(14), log returns over 1/5/15 bars, and
    TA-Lib's engulfing (±100, ±80 when an open equals the other candle's close), doji (100) and
    hammer (100) pattern values."""

    names = ("atr_14", "stoch_k", "stoch_d", "adx_14", "ret_1", "ret_5", "ret_15",
             "cdl_engulfing", "cdl_doji", "cdl_hammer")

    state_size = STATE_SIZE
    step = staticmethod(technical_step)
    history_loop = staticmethod(technical_history)
