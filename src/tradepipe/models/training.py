"""``tradepipe train`` (R6.1, R6.4): labelled history -> walk-forward evaluation -> registry.

For each model kind: one fit per walk-forward fold (early stopping on the last 15% of the
fold's training part, purged), predictions on the fold's test block, metrics per fold and
over all test blocks together, against the baselines on the same rows. Then the model that
goes into the registry is fitted once more on all rows (last 15% again for early stopping),
exported to ONNX, checked against the native model on real rows (max abs difference of the
probabilities below 1e-4) and saved with its card. The card's numbers are the out-of-sample
fold numbers: the final model itself has no test set.

Same files + request (seed included) -> same rows, same data hash, same models byte for byte
and same metrics (R6.4); every library is seeded and runs on a fixed number of threads.

``shuffle_labels`` permutes the labels the models learn from (never the test labels): the
models must then score at the baselines' level, which shows that no test label reaches the
fit (tests use it; it is not a CLI option). That inputs hold no future is tested apart: a
row's inputs do not change when later data is appended.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tradepipe.models.dataset import MIN_ROWS, Dataset, DatasetError, build_dataset
from tradepipe.models.evaluation import (
    Split, classification_metrics, majority_baseline, naive_equity, non_overlapping, validation_split, walk_forward,
)
from tradepipe.models.learners import CLASSES, LEARNERS, Fitted, Learner, LSTMLearner
from tradepipe.models.registry import ModelCard, ModelRegistry, TrainingWindow, onnx_session
from tradepipe.sources.files import timeframe_ms

Progress = Callable[[str, int, int], None]

ONNX_TOLERANCE = 1e-4
ONNX_CHECK_ROWS = 200

#: parameters that train every kind in seconds on the shipped sample (two symbols, three
#: trading days of ticks, ~8k 1m rows), e.g. for `tradepipe run`'s first start without a
#: registry. Real training uses the learners' defaults.
SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "xgboost": {"num_boost_round": 60, "early_stopping_rounds": 10, "max_depth": 3},
    "lightgbm": {"num_boost_round": 60, "early_stopping_rounds": 10, "num_leaves": 7, "min_data_in_leaf": 30},
    "lstm": {"window": 8, "hidden": 16, "max_epochs": 4, "patience": 2, "batch_size": 512},
}


class TrainError(ValueError):
    """A training request that cannot run (bad kinds, a model that fails its ONNX check...)."""


@dataclass(frozen=True)
class TrainRequest:
    paths: tuple[Path, ...]
    symbol: str | None = None  # default: each file name's
    timeframe: str = "1m"
    horizon: int = 5  # bars ahead the label looks
    dead_band: float = 0.35e-4  # return units (0.35 bps); |r| <= dead_band is HOLD
    kinds: tuple[str, ...] = ("xgboost", "lightgbm", "lstm")
    registry: Path = Path("models")
    report: Path | None = Path("reports")  # None: no report files
    seed: int = 42
    n_folds: int = 4
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per kind, over the defaults
    shuffle_labels: bool = False  # leakage check only: learn from permuted labels
    min_rows: int = MIN_ROWS


@dataclass
class ModelResult:
    kind: str
    card: ModelCard
    folds: list[dict]
    overall: dict
    final: dict
    # for the report's plots (not in the card): out-of-sample probabilities on ``test_rows``
    test_rows: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    proba: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3)))


@dataclass
class TrainResult:
    run_id: str
    request: TrainRequest
    dataset: Dataset = field(repr=False)
    folds: list[Split] = field(repr=False)
    baselines: dict  # {"folds": [{"majority": ..., "previous_direction": ...}], "overall": {...}}
    models: dict[str, ModelResult]
    equity_rows: np.ndarray = field(repr=False)  # non-overlapping test rows the equity rule trades
    wall_s: float = 0.0
    warnings: list[str] = field(default_factory=list)  # things a reader of the numbers must know
    report_json: Path | None = None
    report_html: Path | None = None

    @property
    def cards(self) -> list[ModelCard]:
        return [m.card for m in self.models.values()]


def library_versions() -> dict[str, str]:
    """Versions of what made the model, read from the imported modules (the xgboost module
    comes from the "xgboost" or the CPU-only "xgboost-cpu" distribution)."""
    import importlib

    out = {"python": platform.python_version()}
    for module in ("xgboost", "lightgbm", "torch", "onnxruntime", "onnx", "onnxmltools", "numpy", "sklearn"):
        try:
            out[module] = str(importlib.import_module(module).__version__)
        except ImportError:
            out[module] = "not installed"
    out["tradepipe"] = metadata.version("tradepipe")
    return out


def _fit(learner, x, y, x_val, y_val, seed: int):
    try:
        return learner.fit(x, y, x_val, y_val, seed=seed)
    except FloatingPointError as exc:  # e.g. an LSTM whose validation loss never became finite
        raise TrainError(f"{learner.kind}: {exc}") from None


def check_kinds(kinds) -> tuple[str, ...]:
    kinds = tuple(k.strip().lower() for k in kinds if k.strip())
    unknown = [k for k in kinds if k not in LEARNERS]
    if unknown or not kinds:
        raise TrainError(f"unknown model kind(s) {unknown or kinds!r}; choose from {', '.join(LEARNERS)}")
    if len(set(kinds)) != len(kinds):
        raise TrainError(f"model kind listed twice: {', '.join(kinds)}")
    return kinds


def _learners(request: TrainRequest) -> dict[str, Learner]:
    unknown = [k for k in request.params if k not in LEARNERS]
    if unknown:
        raise TrainError(f"params given for unknown kind(s) {unknown}")
    learners = {}
    for kind in check_kinds(request.kinds):
        cls = LEARNERS[kind]
        params = dict(request.params.get(kind, {}))
        bad = sorted(set(params) - set(cls.default_params()))
        if bad:
            raise TrainError(f"unknown {kind} parameter(s) {bad}; known: {', '.join(cls.default_params())}")
        learners[kind] = cls(**params)
    return learners


def dataset_window(request: TrainRequest) -> int:
    """Input rows kept before each labelled row: the LSTM's window whether or not it is
    trained, so the rows (and data hash) do not depend on which kinds a run trains."""
    return LSTMLearner(**request.params.get("lstm", {})).window


def load_dataset(request: TrainRequest, on_progress: Progress | None = None) -> Dataset:
    return build_dataset(
        request.paths, symbol=request.symbol, timeframe=request.timeframe, horizon=request.horizon,
        dead_band=request.dead_band, window=dataset_window(request), min_rows=request.min_rows,
        on_progress=on_progress,
    )


def _verify_onnx(onnx: bytes, fitted: Fitted, x: np.ndarray, window: int, kind: str) -> float:
    session = onnx_session(onnx)
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    native = np.asarray(fitted.predict_proba(x), dtype=np.float64)
    if window == 1:
        exported = session.run(["probabilities"], {name: x})[0]
    else:  # the LSTM graph is exported with batch 1, what the service runs
        exported = np.stack([session.run(["probabilities"], {name: x[i:i + 1]})[0][0] for i in range(len(x))])
    diff = float(np.max(np.abs(np.asarray(exported, dtype=np.float64) - native)))
    if not diff < ONNX_TOLERANCE:
        raise TrainError(f"{kind}: the ONNX export differs from the native model by {diff:.2e} "
                         f"(> {ONNX_TOLERANCE:g}) on {len(x)} rows; not saved")
    return diff


def _check_rows(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, num=min(n, ONNX_CHECK_ROWS)).astype(np.int64))


def _window_of(ds: Dataset, rows: np.ndarray) -> tuple[datetime, datetime]:
    first, last = ds.bar_times(np.array([rows.min(), rows.max()]))
    return first, last


def _without_curve(equity: dict) -> dict:
    return {k: v for k, v in equity.items() if not k.startswith("curve")}


def _strip_curve(metrics: dict) -> dict:
    """``metrics`` with every nested equity curve left out (cards and JSON keep the totals)."""
    return {k: (_strip_curve(v) if isinstance(v, dict) else v) for k, v in metrics.items() if not k.startswith("curve")}


RARE_CLASS = 0.05  # a class below this share of the rows gets a warning


def data_warnings(ds: Dataset, request: TrainRequest) -> list[str]:
    notes = []
    counts = ds.class_counts()
    for name, count in counts.items():
        share = count / max(len(ds), 1)
        if share < RARE_CLASS:
            hint = ("the dead band is small for this horizon; raise --dead-band-bps" if name == "HOLD"
                    else "the dead band is large for this horizon; lower --dead-band-bps")
            notes.append(f"{name} is only {share:.1%} of the labelled rows ({count:,} of {len(ds):,}) with a dead band "
                         f"of {ds.dead_band * 1e4:g} bps over {ds.horizon} x {ds.timeframe}: {hint}. Training weighs "
                         f"the classes equally, so a rare class is predicted far more often than it occurs.")
    if "spread_rel" not in ds.inputs:
        notes.append("the data has no spread input (bar files carry no microstructure group): the naive rule's "
                     "equity is shown before costs only.")
    if request.shuffle_labels:
        notes.append("leakage check: the models learned from shuffled labels; they are worthless by design.")
    return notes


def train(request: TrainRequest, on_progress: Progress | None = None, *, dataset: Dataset | None = None) -> TrainResult:
    """Evaluate and train every kind of ``request``; save each to the registry; write the
    report (unless ``request.report`` is None). ``dataset`` skips building the rows (it must
    have been built for this request: tests build it once for several trainings)."""
    started = time.perf_counter()
    learners = _learners(request)
    if request.n_folds < 1:
        raise TrainError(f"need at least 1 fold, not {request.n_folds}")
    tf_ms = timeframe_ms(request.timeframe)
    ds = dataset if dataset is not None else load_dataset(request, on_progress)
    expected = (request.timeframe, request.horizon, request.dead_band, dataset_window(request))
    if (ds.timeframe, ds.horizon, ds.dead_band, ds.window) != expected:
        raise TrainError(f"the dataset was built for (timeframe, horizon, dead band, window) "
                         f"{(ds.timeframe, ds.horizon, ds.dead_band, ds.window)}, the request asks for {expected}")
    purge_ms = request.horizon * tf_ms
    folds = walk_forward(ds.bar_time_ms, ds.label_end_ms, n_folds=request.n_folds, purge_ms=purge_ms)
    inner = [validation_split(ds.bar_time_ms, ds.label_end_ms, f.train, purge_ms=purge_ms) for f in folds]
    final_split = validation_split(ds.bar_time_ms, ds.label_end_ms, np.arange(len(ds)), purge_ms=purge_ms)
    y_learn = ds.y
    if request.shuffle_labels:
        y_learn = np.random.default_rng(request.seed).permutation(ds.y)

    # baselines: on the same test rows as every model
    test_all = np.concatenate([f.test for f in folds])
    equity_rows = non_overlapping(ds.symbol, ds.bar_time_ms, ds.label_end_ms, test_all)
    # relative spread at entry (the bar's mean spread / mid close, from the microstructure group),
    # for the equity rule's after-spread total; absent when a file is bars (no such group)
    spread = ds.x[:, ds.inputs.index("spread_rel")].astype(np.float64) if "spread_rel" in ds.inputs else None

    def equity(pred: np.ndarray, rows: np.ndarray) -> dict:
        return naive_equity(pred, ds.forward_return[rows], None if spread is None else spread[rows])

    base_folds, majority_pred, majority_proba = [], [], []
    for k, fold in enumerate(folds):
        cls, proba = majority_baseline(ds.y[fold.train], len(fold.test))
        majority_pred.append(np.full(len(fold.test), cls))
        majority_proba.append(proba)
        base_folds.append({
            "fold": k + 1,
            "majority": {"class": CLASSES[cls], **classification_metrics(ds.y[fold.test], proba, pred=majority_pred[-1])},
            "previous_direction": classification_metrics(ds.y[fold.test], pred=ds.past_label[fold.test]),
        })
    majority_pred_all = np.concatenate(majority_pred)
    position_in_test = {int(r): i for i, r in enumerate(test_all)}
    eq_pos = np.array([position_in_test[int(r)] for r in equity_rows], dtype=np.int64)
    baselines = {
        "folds": base_folds,
        "overall": {
            "majority": {**classification_metrics(ds.y[test_all], np.concatenate(majority_proba),
                                                  pred=majority_pred_all),
                         "equity": equity(majority_pred_all[eq_pos], equity_rows)},
            "previous_direction": {**classification_metrics(ds.y[test_all], pred=ds.past_label[test_all]),
                                   "equity": equity(ds.past_label[equity_rows], equity_rows)},
        },
    }
    card_baselines = {"folds": base_folds, "overall": _strip_curve(baselines["overall"])}

    registry = ModelRegistry(request.registry)
    libraries = library_versions()
    models: dict[str, ModelResult] = {}
    steps = len(folds) + 1
    for kind, learner in learners.items():
        w = learner.window
        fold_metrics, probas = [], []
        if on_progress:
            on_progress(kind, 0, steps)
        for k, (fold, split) in enumerate(zip(folds, inner)):
            fitted = _fit(learner, ds.features(split.train, w), y_learn[split.train],
                          ds.features(split.test, w), y_learn[split.test], request.seed)
            proba = np.asarray(fitted.predict_proba(ds.features(fold.test, w)), dtype=np.float64)
            probas.append(proba)
            in_fold = non_overlapping(ds.symbol, ds.bar_time_ms, ds.label_end_ms, fold.test)
            fold_pos = np.searchsorted(fold.test, in_fold)
            start, end = _window_of(ds, fold.test)
            fold_metrics.append({
                "fold": k + 1,
                "train_rows": int(len(split.train)), "validation_rows": int(len(split.test)),
                "test_rows": int(len(fold.test)),
                "train_end": _window_of(ds, split.test)[1].isoformat(),
                "test_start": start.isoformat(), "test_end": end.isoformat(),
                "best_iteration": int(fitted.best_iteration),
                **classification_metrics(ds.y[fold.test], proba),
                "equity": _without_curve(equity(np.argmax(proba[fold_pos], axis=1), in_fold)),
            })
            if on_progress:
                on_progress(kind, k + 1, steps)
        proba_all = np.concatenate(probas)
        overall = {**classification_metrics(ds.y[test_all], proba_all),
                   "equity": equity(np.argmax(proba_all[eq_pos], axis=1), equity_rows)}

        # the registry's model: all rows, last 15% for early stopping
        fitted = _fit(learner, ds.features(final_split.train, w), y_learn[final_split.train],
                      ds.features(final_split.test, w), y_learn[final_split.test], request.seed)
        n_inputs = len(ds.inputs)
        onnx = fitted.onnx_bytes(n_inputs, w)
        check = _check_rows(len(ds))
        x_check = ds.features(check, w)
        diff = _verify_onnx(onnx, fitted, x_check, w, kind)
        used = np.concatenate([final_split.train, final_split.test])
        start, end = _window_of(ds, used)
        final = {"fit_rows": int(len(final_split.train)), "validation_rows": int(len(final_split.test)),
                 "best_iteration": int(fitted.best_iteration), "onnx_max_abs_diff": diff,
                 "onnx_checked_rows": int(len(check))}
        params = dict(learner.params)
        if request.shuffle_labels:
            params["shuffle_labels"] = True  # a leakage-check model: never use it
        card = registry.save(
            {
                "kind": kind,
                "inputs": list(ds.inputs),
                "window": w,
                "symbols": sorted(set(ds.symbol.tolist())),
                "timeframe": request.timeframe,
                "horizon": request.horizon,
                "dead_band": request.dead_band,
                "training_window": TrainingWindow(start=start, end=end, rows=int(len(used))),
                "data_hash": ds.data_hash,
                "data_files": dict(ds.data_files),
                "seed": request.seed,
                "params": params,
                "metrics": {"folds": fold_metrics, "overall": _strip_curve(overall), "baselines": card_baselines,
                            "final": final, "n_folds": len(folds), "purge_ms": purge_ms,
                            "evaluation": "walk-forward, expanding window, purged; out-of-sample"},
                "accuracy": overall["accuracy"],
                "libraries": libraries,
            },
            {"model.onnx": onnx, f"model.{fitted.native_suffix}": fitted.native_bytes()},
        )
        registry.load(card.name)  # the written entry passes the checks a service's load makes
        if on_progress:
            on_progress(kind, steps, steps)
        models[kind] = ModelResult(kind, card, fold_metrics, overall, final, test_all, proba_all)

    run_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{ds.data_hash[:8]}"
    result = TrainResult(run_id=run_id, request=request, dataset=ds, folds=folds, baselines=baselines,
                         models=models, equity_rows=equity_rows, wall_s=round(time.perf_counter() - started, 3),
                         warnings=data_warnings(ds, request))
    if request.report is not None:
        from tradepipe.models.report import write_report

        if on_progress:
            on_progress("report", 0, 1)
        result.report_json, result.report_html = write_report(result, request.report)
        if on_progress:
            on_progress("report", 1, 1)
    result.wall_s = round(time.perf_counter() - started, 3)
    return result


__all__ = ["SMALL_PARAMS", "DatasetError", "ModelResult", "TrainError", "TrainRequest", "TrainResult",
           "check_kinds", "dataset_window", "library_versions", "load_dataset", "train"]
