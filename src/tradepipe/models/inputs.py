"""Model inputs: the joined features of a bar turned into a scale-free vector (R5.5, R6.1).

Raw features are in price units (MACD, SMA, ATR, spreads...), so a model trained on EURUSD at
1.38 could not be applied to USDJPY at 95. Every input here is a ratio, a return, a bounded
oscillator or a count, so a model can be applied to another symbol or price level.

:func:`input_matrix` is the **only** implementation, used by training (a whole feature table)
and by the live model services (one joined vector, as a 1-row table), so the two cannot drift.
NaN marks an input that is not defined (warm-up, a missing feature group); trees treat it as
missing, the LSTM imputes the training mean, and the services fall back instead of predicting
on a vector with NaN (see :mod:`tradepipe.services.model_service`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Column = Callable[[str], np.ndarray]  # a raw feature's column, or its np.float64 value for one row


def _ratio(a, b):
    """a / b, NaN where b is 0 (flat bands, ATR 0 on a frozen quote) instead of inf. Works on
    columns (training) and on numpy float64 scalars (one live row: ~10x cheaper than 1-row
    arrays); both are IEEE float64, so the values are the same."""
    if np.ndim(b) == 0:
        return a / b if b != 0 else np.nan
    return np.divide(a, b, out=np.full(np.shape(a), np.nan), where=b != 0)


def _zero_if_nan(x):
    return np.where(np.isnan(x), 0.0, x) if np.ndim(x) else (0.0 if x != x else x)


#: name -> (raw features it needs, formula over raw columns). Order is the vector's order.
INPUTS: dict[str, tuple[tuple[str, ...], Callable[[Column], np.ndarray]]] = {
    # momentum and trend, volatility-normalised by ATR
    "rsi": (("rsi",), lambda f: f("rsi") / 100.0 - 0.5),
    "macd_atr": (("macd", "atr_14"), lambda f: _ratio(f("macd"), f("atr_14"))),
    "macd_signal_atr": (("macd_signal", "atr_14"), lambda f: _ratio(f("macd_signal"), f("atr_14"))),
    "macd_hist_atr": (("macd_hist", "atr_14"), lambda f: _ratio(f("macd_hist"), f("atr_14"))),
    "close_sma20_atr": (("close", "sma_20", "atr_14"), lambda f: _ratio(f("close") - f("sma_20"), f("atr_14"))),
    "close_ema50_atr": (("close", "ema_50", "atr_14"), lambda f: _ratio(f("close") - f("ema_50"), f("atr_14"))),
    "sma20_ema50_atr": (("sma_20", "ema_50", "atr_14"), lambda f: _ratio(f("sma_20") - f("ema_50"), f("atr_14"))),
    "bb_position": (
        ("close", "bb_lower", "bb_upper"),
        lambda f: _ratio(f("close") - f("bb_lower"), f("bb_upper") - f("bb_lower")) - 0.5,
    ),
    "bb_width": (("bb_width",), lambda f: f("bb_width")),
    "atr_rel": (("atr_14", "close"), lambda f: _ratio(f("atr_14"), f("close"))),
    "stoch_k": (("stoch_k",), lambda f: f("stoch_k") / 100.0 - 0.5),
    "stoch_d": (("stoch_d",), lambda f: f("stoch_d") / 100.0 - 0.5),
    "adx": (("adx_14",), lambda f: f("adx_14") / 100.0),
    "ret_1": (("ret_1",), lambda f: f("ret_1")),
    "ret_5": (("ret_5",), lambda f: f("ret_5")),
    "ret_15": (("ret_15",), lambda f: f("ret_15")),
    "cdl_engulfing": (("cdl_engulfing",), lambda f: f("cdl_engulfing") / 100.0),
    "cdl_doji": (("cdl_doji",), lambda f: f("cdl_doji") / 100.0),
    "cdl_hammer": (("cdl_hammer",), lambda f: f("cdl_hammer") / 100.0),
    # microstructure (tick data only)
    "spread_rel": (("spread_mean", "mid_close"), lambda f: _ratio(f("spread_mean"), f("mid_close"))),
    "spread_max_rel": (("spread_max", "mid_close"), lambda f: _ratio(f("spread_max"), f("mid_close"))),
    "log_ticks": (("tick_count",), lambda f: np.log1p(f("tick_count"))),
    "realized_vol": (("realized_vol",), lambda f: f("realized_vol")),
    # None when the mid never moved within the bar: no imbalance, not an unknown one
    "tick_imbalance": (("tick_imbalance",), lambda f: _zero_if_nan(f("tick_imbalance"))),
}

MODEL_INPUTS: tuple[str, ...] = tuple(INPUTS)


class InputError(ValueError):
    """A model asks for inputs this code does not define, or the features lack a column."""


def available_inputs(columns: Sequence[str]) -> tuple[str, ...]:
    """The inputs computable from raw feature ``columns`` (e.g. no microstructure from bar
    files), in vector order."""
    have = set(columns)
    return tuple(name for name, (needs, _) in INPUTS.items() if have.issuperset(needs))


def check_inputs(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in INPUTS]
    if unknown:
        raise InputError(f"unknown model inputs {unknown}; known: {', '.join(MODEL_INPUTS)}")
    if len(set(names)) != len(names):
        raise InputError(f"model inputs listed twice: {sorted({n for n in names if list(names).count(n) > 1})}")


def required_features(names: Sequence[str]) -> tuple[str, ...]:
    """The raw feature names ``names`` are computed from, sorted."""
    check_inputs(names)
    return tuple(sorted({raw for n in names for raw in INPUTS[n][0]}))


def input_matrix(columns: Sequence[str], values: np.ndarray, names: Sequence[str] = MODEL_INPUTS) -> np.ndarray:
    """Inputs ``names`` (in that order) of every row of raw ``values`` (rows x ``columns``,
    NaN = undefined) as float32, shape (rows, len(names)). A raw column that ``names`` need
    but ``columns`` lack is all NaN (a feature group that never arrived)."""
    check_inputs(names)
    index = {c: i for i, c in enumerate(columns)}
    values = np.asarray(values, dtype=np.float64)
    missing = np.full(values.shape[0], np.nan)

    def column(name: str) -> np.ndarray:
        i = index.get(name)
        return missing if i is None else values[:, i]

    out = np.empty((values.shape[0], len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        out[:, j] = INPUTS[name][1](column)
    return out


def input_vector(features: Mapping[str, float | None], names: Sequence[str]) -> np.ndarray:
    """One bar's joined features (None = undefined) as the model's input row, shape (len(names),)."""
    raw = required_features(names)
    row = np.array([[np.nan if (v := features.get(c)) is None else v for c in raw]], dtype=np.float64)
    return input_matrix(raw, row, names)[0]
