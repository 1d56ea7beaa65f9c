"""Walk-forward evaluation (R6.1): time-ordered folds with a purge gap, metrics, baselines.

Folds: the rows' time range is cut into ``n_folds + 1`` equal blocks; fold k tests on block
k + 1 and trains on the rows *before* it, minus a purge: a training row is kept only if its
bar is at least ``purge`` (horizon x timeframe) before the test block **and** its label's
last bar (``label_end``, row t + h) is before the test block too, so no training label looks
at a price inside the test period (rows whose horizon spans a gap have a later label end
than ``purge`` alone would cover). The early-stopping validation slice (the last 15% of the
training part) is separated from the fitted part the same way. Nothing is tuned on test
rows: the test block is used once, for the numbers reported.

Metrics come from scikit-learn. Baselines on the same test rows: the majority class of the
fold's training labels (its probabilities are the training class shares, so it has a
log-loss too), and the previous direction (the label of the past-h return, known at t).

The naive equity rule: hold +1 on BUY, -1 on SELL, 0 on HOLD for the horizon, over test rows
that do not overlap (per symbol, the next trade starts at or after the previous label's last
bar); P&L is the position times the forward mid return, summed, **before costs** (no spread,
no commission).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import msgspec
import numpy as np

from tradepipe.models.learners import CLASSES

VALIDATION_SHARE = 0.15
PROB_CLIP = 1e-7


class EvaluationError(ValueError):
    """The rows cannot make the folds asked for (too few rows before a test block...)."""


class Split(msgspec.Struct, frozen=True):
    """Row indices (into the time-sorted dataset) of one fit/validation or train/test split."""

    train: np.ndarray
    test: np.ndarray
    test_start_ms: int
    test_end_ms: int  # exclusive, except the last block which includes the last row


def purged_before(bar_time_ms: np.ndarray, label_end_ms: np.ndarray, candidates: np.ndarray, start_ms: int,
                  purge_ms: int) -> np.ndarray:
    """The ``candidates`` whose bar is at least ``purge_ms`` before ``start_ms`` and whose
    label ends (row t+h's bar) strictly before ``start_ms``."""
    keep = (bar_time_ms[candidates] <= start_ms - purge_ms) & (label_end_ms[candidates] < start_ms)
    return candidates[keep]


def walk_forward(bar_time_ms: np.ndarray, label_end_ms: np.ndarray, *, n_folds: int, purge_ms: int,
                 min_train: int = 50) -> list[Split]:
    """``n_folds`` expanding-window folds over time-sorted rows (see the module docstring)."""
    bar_time_ms = np.asarray(bar_time_ms, dtype=np.int64)
    if n_folds < 1:
        raise EvaluationError(f"need at least 1 fold, not {n_folds}")
    if len(bar_time_ms) == 0:
        raise EvaluationError("no rows")
    if np.any(np.diff(bar_time_ms) < 0):
        raise EvaluationError("rows must be sorted by bar time")
    lo, hi = int(bar_time_ms[0]), int(bar_time_ms[-1])
    edges = [lo + (hi - lo) * i // (n_folds + 1) for i in range(n_folds + 2)]
    rows = np.arange(len(bar_time_ms))
    folds = []
    for k in range(n_folds):
        start, end = edges[k + 1], edges[k + 2]
        last = k == n_folds - 1
        in_block = (bar_time_ms >= start) & ((bar_time_ms <= end) if last else (bar_time_ms < end))
        test = rows[in_block]
        train = purged_before(bar_time_ms, label_end_ms, rows[bar_time_ms < start], start, purge_ms)
        if len(test) == 0:
            raise EvaluationError(f"fold {k + 1} of {n_folds} has no test rows (a gap in the data); use fewer folds")
        if len(train) < min_train:
            raise EvaluationError(
                f"fold {k + 1} of {n_folds} has only {len(train)} training rows (needs {min_train}); "
                "use fewer folds or more data")
        folds.append(Split(train, test, start, end + (1 if last else 0)))
    return folds


def validation_split(bar_time_ms: np.ndarray, label_end_ms: np.ndarray, train: np.ndarray, *, purge_ms: int,
                     share: float = VALIDATION_SHARE) -> Split:
    """Split time-sorted ``train`` rows into a fitted part and the last ``share`` as the
    early-stopping validation slice, with the same purge between them."""
    n_val = max(int(round(len(train) * share)), 1)
    val = train[-n_val:]
    start = int(bar_time_ms[val[0]])
    # rows sharing the first validation bar time (other symbols) belong to validation too
    val = train[bar_time_ms[train] >= start]
    fit = purged_before(bar_time_ms, label_end_ms, train[bar_time_ms[train] < start], start, purge_ms)
    if len(fit) == 0:
        raise EvaluationError(f"no rows left to fit on before the validation slice ({len(train)} training rows)")
    return Split(fit, val, start, int(bar_time_ms[val[-1]]) + 1)


# --- metrics ---------------------------------------------------------------------------------

def _onehot(pred: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES))[pred]


def classification_metrics(y_true: np.ndarray, proba: np.ndarray | None = None, *,
                           pred: np.ndarray | None = None) -> dict:
    """accuracy, balanced accuracy, precision per class, log-loss, one-vs-rest macro ROC AUC
    (None when a class is absent from ``y_true`` or there are no probabilities), confusion
    matrix (rows: true SELL/HOLD/BUY, columns: predicted), class counts. ``pred`` defaults to
    the most probable class of ``proba``; with ``pred`` only, log-loss and AUC are None."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, log_loss,
                                 precision_score, roc_auc_score)

    labels = list(range(len(CLASSES)))
    y_true = np.asarray(y_true, dtype=np.int64)
    if pred is None:
        if proba is None:
            raise ValueError("give proba or pred")
        pred = np.argmax(proba, axis=1)
    pred = np.asarray(pred, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # absent classes: sklearn warns, the numbers are still defined
        out = {
            "rows": int(len(y_true)),
            "accuracy": float(accuracy_score(y_true, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
            "precision": dict(zip(CLASSES, map(float, precision_score(
                y_true, pred, labels=labels, average=None, zero_division=0)))),
            "log_loss": None,
            "roc_auc": None,
            "confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
            "true_counts": np.bincount(y_true, minlength=len(CLASSES)).tolist(),
            "predicted_counts": np.bincount(pred, minlength=len(CLASSES)).tolist(),
        }
        if proba is not None:
            p = np.clip(np.asarray(proba, dtype=np.float64), PROB_CLIP, 1.0)
            p /= p.sum(axis=1, keepdims=True)
            out["log_loss"] = float(log_loss(y_true, p, labels=labels))
            if len(np.unique(y_true)) == len(CLASSES):
                out["roc_auc"] = float(roc_auc_score(y_true, p, labels=labels, multi_class="ovr", average="macro"))
    return out


def majority_baseline(y_train: np.ndarray, n_test: int) -> tuple[int, np.ndarray]:
    """The majority class of the training labels (ties: the lower class index) and its
    probabilities for ``n_test`` rows (the training class shares)."""
    counts = np.bincount(y_train, minlength=len(CLASSES)).astype(np.float64)
    shares = counts / counts.sum()
    return int(np.argmax(counts)), np.tile(shares, (n_test, 1))


def non_overlapping(symbol: np.ndarray, bar_time_ms: np.ndarray, label_end_ms: np.ndarray,
                    rows: Sequence[int]) -> np.ndarray:
    """Of time-sorted ``rows``, the ones a one-position-per-symbol rule can trade: per
    symbol, each next trade starts at or after the previous trade's label end bar."""
    free_at: dict[str, int] = {}
    picked = []
    for r in rows:
        s = symbol[r]
        if bar_time_ms[r] >= free_at.get(s, -(1 << 62)):
            picked.append(r)
            free_at[s] = int(label_end_ms[r])
    return np.asarray(picked, dtype=np.int64)


def naive_equity(pred: np.ndarray, forward_return: np.ndarray, spread: np.ndarray | None = None) -> dict:
    """The long/short-on-prediction rule over rows already chosen not to overlap:
    +1 BUY, -1 SELL, 0 HOLD times the forward return, cumulated (sum, before costs).
    With ``spread`` (relative spread at entry, return units) also the total after paying it
    once per trade (crossing the spread for a round trip)."""
    position = np.asarray(pred, dtype=np.int64) - 1  # SELL 0 -> -1, HOLD 1 -> 0, BUY 2 -> +1
    pnl = position * np.asarray(forward_return, dtype=np.float64)
    traded = position != 0
    out = {
        "trades": int(traded.sum()),
        "total_return": float(pnl.sum()),
        "hit_rate": float((pnl[traded] > 0).mean()) if traded.any() else None,
        "mean_return_per_trade": float(pnl[traded].mean()) if traded.any() else None,
        "total_return_after_spread": None,
        "curve": np.cumsum(pnl).tolist(),
    }
    if spread is not None:
        net = pnl - np.where(traded, np.nan_to_num(np.asarray(spread, dtype=np.float64)), 0.0)
        out["total_return_after_spread"] = float(net.sum())
        out["curve_after_spread"] = np.cumsum(net).tolist()
    return out
