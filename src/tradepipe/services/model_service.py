"""The model services (R6.2, R3.3): one registry model each, one PredictionGenerated per bar.

A :class:`ModelService` consumes ``features-calculated``, joins the feature groups of one
(symbol, timeframe, bar) with :class:`~tradepipe.features.join.FeatureJoin` (deadline in event
time), turns the joined features into the model's input vector (:mod:`tradepipe.models.inputs`,
the same code training used), predicts with ONNX Runtime and emits a PredictionGenerated:

- ``direction``/``confidence``: the most probable of SELL, HOLD, BUY and its probability;
- ``targetPrice``/``stopLoss``: the bar's mid close ± 2 ATR(14) / ∓ 1 ATR (None for HOLD);
- ``timeHorizon``: the card's horizon ("5m"); ``model``: card name, validation accuracy, and
  the wall time of the call (``inferenceTime``, e.g. "23us");
- ``timeframe``, ``barTime``, ``price`` so the ensemble can score the prediction later;
- correlationId: the bar's (the tick that closed it), causationId: the bar's group that comes
  last in the in-process dispatch (technical analysis; microstructure comes first, from the
  tick itself, then feature engineering and technical analysis from the bar), the one that
  completes the join in process. On a bus the groups arrive in any order: the prediction's
  causationId, and the ids derived from it, stay those of that group all the same.

Only the model's own timeframe is handled, and only the feature groups that publish the raw
features its inputs need are joined (always feature engineering, for ``close`` and the trend
rule, and technical analysis, for ATR): a model trained on bar files never waits for the
microstructure group.

Failure handling (R3.3). Inference runs behind a :class:`~tradepipe.runtime.breaker.
CircuitBreaker` read with the service's clock (event time in backtests): an exception, a call
slower than ``inference_timeout_s`` or a non-finite output is a failure; 5 in a row open the
breaker, after the recovery time one probe goes through (HALF_OPEN), its success closes it.
Every transition is emitted as a CircuitBreakerStateChanged (topic system-events). Whenever
no model output can be used the **fallback** answers, marked ``fallback=True``: the symbol's
last good prediction while its bar is younger than ``fallback_fresh_s`` (event time), else a
trend-following rule (``model.name`` "TrendRule"). Bad input is not a model failure: a vector
with NaN (warm-up, a group missing at the deadline) or an LSTM window not yet full takes the
fallback without touching the breaker. One PredictionGenerated is emitted per joined bar, so
the ensemble hears from every model (a partial join older than a bar already predicted is
dropped and counted in ``late_bars``, so the LSTM window stays in order).

Backtests are deterministic in their decisions, with two wall-clock exceptions: a call slower
than ``inference_timeout_s`` counts as a failure (on a badly overloaded machine a replay could
open a breaker elsewhere), and ``inferenceTime`` reports the measured time.

Hangs (``models.inference_guard``). ``"watchdog"`` (default): the model runs in the
handler's thread with ONNX Runtime's terminate flag armed; the process's one watchdog thread
sets it once ``inference_timeout_s`` has passed and the run stops with an error (a failure).
It costs ~1 us a call, but cannot stop a hang outside ONNX Runtime. ``"thread"``: each call
runs on one reusable worker thread per service and the handler waits at most
``inference_timeout_s``; a call that times out leaves its thread behind (it cannot be
killed) and the next call gets a new one. It stops any hang, but waking the worker costs
100-400 us a call on this 2-core VM (``BENCHMARKS.md`` "Inference"). Either way a call that
took longer than the timeout counts as a failure.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

import msgspec
import numpy as np

from tradepipe.config import ModelSettings
from tradepipe.events import FEATURES, Event, FeaturesCalculated
from tradepipe.events.types import CircuitBreakerStateChanged, ModelInfo, Prediction, PredictionGenerated
from tradepipe.features.core import CoreIndicators
from tradepipe.features.join import FEATURE_GROUPS, FeatureJoin, JoinedFeatures
from tradepipe.features.microstructure import NAMES as MICROSTRUCTURE_NAMES
from tradepipe.features.technical import TechnicalIndicators
from tradepipe.models.inputs import INPUTS, check_inputs, required_features
from tradepipe.models.dataset import GAP_FACTOR
from tradepipe.models.learners import CLASSES
from tradepipe.models.registry import LoadedModel, ModelLoadError
from tradepipe.sources.files import timeframe_ms
from tradepipe.runtime.breaker import CircuitBreaker, Transition
from tradepipe.runtime.service import Context, Service

FE, TA, MM = FEATURE_GROUPS
#: a bar's groups in the order the in-process kernel hands them over (see ``causationId``)
DISPATCH_RANK = {MM: 0, FE: 1, TA: 2}

#: which feature group publishes each raw feature (derived from the feature code itself)
FEATURE_GROUP_OF: dict[str, str] = {
    **{name: FE for name in (*CoreIndicators.names, "close")},
    **{name: TA for name in TechnicalIndicators.names},
    **{name: MM for name in MICROSTRUCTURE_NAMES},
}

TREND_RULE = "TrendRule"
TARGET_ATR, STOP_ATR = 2.0, 1.0  # target = price ± 2 ATR, stop = price ∓ 1 ATR
MAX_HUNG_CALLS = 4  # timed-out calls whose threads are still running; beyond it, fail at once


# --- input vectors -------------------------------------------------------------------------

class InputVector:
    """``input_vector`` with the per-call work done once: the raw feature list, the column
    index and the formulas of ``names`` are resolved at construction; each call gathers the
    raw values and applies the same formulas (:data:`tradepipe.models.inputs.INPUTS`, the one
    implementation). The result is read-only.

    A one-slot memo per input list (process-wide) returns the previous vector when the raw
    values are equal: the model services of one process join the same bar into equal
    features, so with three models on the same inputs the formulas run once per bar, not
    three times (~60 us saved per model). It memoises a pure function of its arguments, so
    it cannot change a result.
    """

    _memo: ClassVar[dict[tuple[str, ...], tuple[tuple, np.ndarray]]] = {}

    def __init__(self, names: Sequence[str]) -> None:
        check_inputs(names)
        self.names = tuple(names)
        self.raw = required_features(self.names)
        self._index = {c: i for i, c in enumerate(self.raw)}
        self._formulas = tuple(INPUTS[n][1] for n in self.names)

    def __call__(self, features: Mapping[str, float | None]) -> np.ndarray:
        values = tuple(map(features.get, self.raw))
        memo = self._memo.get(self.names)
        if memo is not None and memo[0] == values:
            return memo[1]
        row = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        index = self._index
        column = lambda name: row[index[name]]  # noqa: E731 - np.float64 scalars: the cheap path of the formulas
        out = np.empty(len(self._formulas), dtype=np.float32)
        for j, formula in enumerate(self._formulas):
            out[j] = formula(column)
        out.flags.writeable = False
        self._memo[self.names] = (values, out)
        return out


# --- inference with a timeout ----------------------------------------------------------------

class InferenceTimeout(TimeoutError):
    pass


class _Worker:
    """One daemon thread running calls handed over through two raw locks (the cheapest
    handoff CPython has: ~12 us round trip, vs ~15 us for a ThreadPoolExecutor future).
    After a timeout the worker is retired: its thread ends when the hung call returns."""

    def __init__(self, name: str) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._fn: Any = None
        self._arg: Any = None
        self._result: Any = None
        self._error: BaseException | None = None
        self.retired = False
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            if self.retired:
                return
            try:
                self._result = self._fn(self._arg)
            except BaseException as exc:  # handed back to the caller
                self._error = exc
            self._done.release()
            if self.retired:
                return

    def call(self, fn, arg, timeout: float):
        self._fn, self._arg, self._result, self._error = fn, arg, None, None
        self._go.release()
        if not self._done.acquire(timeout=timeout):
            self.stop()
            raise InferenceTimeout(f"no answer within {timeout:g}s")
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result

    def stop(self) -> None:
        self.retired = True
        if self._go.locked():
            self._go.release()  # wakes an idle thread so it can end


# --- the service -----------------------------------------------------------------------------

class _LastGood(msgspec.Struct, array_like=True):
    bar_time: datetime
    direction: str
    confidence: float


class ModelService(Service):
    """Base of the three model services; subclasses set ``name``, ``port`` and ``kind``."""

    inputs = (FEATURES,)
    kind: ClassVar[str]

    def __init__(self, model: LoadedModel, settings: ModelSettings | None = None, *,
                 guard: Literal["watchdog", "thread"] | None = None) -> None:
        settings = settings or ModelSettings()
        card = model.card
        if card.kind != self.kind:
            raise ModelLoadError(f"{model.path}: a {card.kind} model cannot run in the {self.name} service")
        needs = required_features(card.inputs)
        unknown = [raw for raw in needs if raw not in FEATURE_GROUP_OF]
        if unknown:
            raise ModelLoadError(f"{model.path}: inputs need features no feature service publishes: {unknown}")
        self.model = model
        self.card = card
        self.timeframe = card.timeframe
        self.window = max(int(card.window), 1)
        self._window_gap = timedelta(milliseconds=GAP_FACTOR * max(self.window - 1, 1) * timeframe_ms(card.timeframe))
        self.vector = InputVector(card.inputs)
        groups = {FE, TA} | {FEATURE_GROUP_OF[raw] for raw in needs}
        self.join = FeatureJoin(tuple(g for g in FEATURE_GROUPS if g in groups),
                                timedelta(seconds=settings.join_deadline_s))
        self._groups = frozenset(self.join.groups)
        self.breaker = CircuitBreaker(f"{self.name}/{card.name}", threshold=settings.breaker_threshold,
                                      recovery=timedelta(seconds=settings.breaker_recovery_s))
        self.timeout_s = settings.inference_timeout_s
        self.fresh = timedelta(seconds=settings.fallback_fresh_s)
        self.guard = guard or settings.inference_guard
        self._model_info = ModelInfo(name=card.name, accuracy=card.accuracy)
        self._horizon = card.time_horizon
        # state (snapshot)
        self.windows: dict[str, deque[np.ndarray]] = {}
        self.last_good: dict[str, _LastGood] = {}
        self.last_bar: dict[str, datetime] = {}  # newest bar handed out per symbol
        # worker thread for guard "thread"
        self._worker: _Worker | None = None
        self._hung: list[threading.Thread] = []
        # counters for the run summary (not state)
        self.predictions = 0
        self.fallbacks = 0
        self.failures = 0
        self.timeouts = 0
        self.transitions = 0
        self.late_bars = 0
        self.fallback_reasons: Counter[str] = Counter()

    # -- handling -------------------------------------------------------------------------
    def handle(self, event: Event, ctx: Context) -> list[Event]:
        out: list[Event] = []
        join = self.join
        if join.in_flight:
            for late in join.expire(ctx.now()):
                self._on_joined(late, ctx, out, event)
        if (type(event) is not FeaturesCalculated or event.timeframe != self.timeframe
                or event.group not in self._groups or event.bar_time is None):
            return out
        last = self.last_bar.get(event.symbol)
        if last is not None and event.bar_time <= last:
            return out  # a group of a bar already handed out (late, or re-published)
        joined = join.add(event)
        if joined is not None:
            self._on_joined(joined, ctx, out, event)
        return out

    def on_timer(self, ctx: Context) -> list[Event]:
        out: list[Event] = []
        for late in self.join.expire(ctx.now()):
            self._on_joined(late, ctx, out, None)
        return out

    def _on_joined(self, joined: JoinedFeatures, ctx: Context, out: list[Event], handling: Event | None) -> None:
        """Predict ``joined`` (found while ``handling`` an event, or on a timer)."""
        symbol, bar_time, features = joined.symbol, joined.bar_time, joined.features
        previous = self.last_bar.get(symbol)
        if previous is not None and bar_time <= previous:
            self.late_bars += 1  # a partial join older than a bar already handed out (a deadline
            return  # longer than a bar): predicting it now would put the LSTM window out of order
        self.last_bar[symbol] = bar_time
        first = joined.sources[0]
        cause = max(joined.sources, key=lambda source: DISPATCH_RANK[source.group])
        ctx.begin(handling, key=cause.event_id.bytes)  # the outputs' ids: as if ``cause`` had completed it
        ids = {"symbol": symbol, "correlation_id": first.correlation_id or first.event_id,
               "causation_id": cause.event_id}
        vector = self.vector(features)
        if self.window > 1:
            window = self.windows.get(symbol)
            if window is None:
                window = self.windows[symbol] = deque(maxlen=self.window)
            elif previous is not None and bar_time - previous > self._window_gap:
                window.clear()  # training drops windows that span a data gap (a weekend): so do we
            window.append(vector)
            x = np.stack(window) if len(window) == self.window else None
        else:
            x = vector
        now = ctx.now()
        if x is None:
            reason = "window not full"
        elif not np.isfinite(x).all():
            reason = "non-finite inputs" if joined.complete else f"missing {', '.join(joined.missing)}"
        else:
            reason = self._predict(x, symbol, joined, ctx, now, ids, out)
            if reason is None:
                return
        out.append(self._fallback(symbol, joined, ctx, ids, reason))

    def _predict(self, x: np.ndarray, symbol: str, joined: JoinedFeatures, ctx: Context, now: datetime,
                 ids: dict, out: list[Event]) -> str | None:
        """Run the model behind the breaker; emit the prediction and return None, or return
        why the fallback must answer."""
        breaker = self.breaker
        allowed, transition = breaker.allow(now)
        if transition is not None:
            out.append(self._transition(transition, ctx, ids))
        if not allowed:
            return "breaker open"
        started = time.perf_counter()
        try:
            proba = self._call(x)
            if proba.shape != (len(CLASSES),) or not np.isfinite(proba).all():
                raise ValueError(f"model returned {proba!r}")
        except Exception as exc:
            self.failures += 1
            if isinstance(exc, InferenceTimeout):
                self.timeouts += 1
            reason = f"{type(exc).__name__}: {exc}"
            transition = breaker.failure(now, reason)
            if transition is not None:
                out.append(self._transition(transition, ctx, ids))
            return "model failed"
        elapsed_us = (time.perf_counter() - started) * 1e6
        transition = breaker.success()
        if transition is not None:
            out.append(self._transition(transition, ctx, ids))
        best = int(proba.argmax())
        direction, confidence = CLASSES[best], float(proba[best])
        self.last_good[symbol] = _LastGood(joined.bar_time, direction, confidence)
        info = ModelInfo(name=self._model_info.name, accuracy=self._model_info.accuracy,
                         inference_time=f"{elapsed_us:.0f}us")
        out.append(self._prediction(joined, ctx, ids, direction, confidence, info, fallback=False))
        return None

    def _call(self, x: np.ndarray) -> np.ndarray:
        predict = self.model.predict_proba
        if self.guard == "watchdog":
            started = time.perf_counter()
            proba = predict(x, timeout_s=self.timeout_s)
            if time.perf_counter() - started > self.timeout_s:
                raise InferenceTimeout(f"answer took longer than {self.timeout_s:g}s")
            return proba
        worker = self._worker
        if worker is None:
            self._hung = [t for t in self._hung if t.is_alive()]
            if len(self._hung) >= MAX_HUNG_CALLS:
                raise InferenceTimeout(f"{len(self._hung)} earlier calls are still hung")
            worker = self._worker = _Worker(f"{self.name}-inference")
        try:
            return worker.call(predict, x, self.timeout_s)
        except InferenceTimeout:
            self._hung.append(worker.thread)
            self._worker = None
            raise

    def _fallback(self, symbol: str, joined: JoinedFeatures, ctx: Context, ids: dict, reason: str) -> PredictionGenerated:
        self.fallbacks += 1
        self.fallback_reasons[reason] += 1
        last = self.last_good.get(symbol)
        if last is not None and joined.bar_time - last.bar_time < self.fresh:
            info = self._model_info
            direction, confidence = last.direction, last.confidence
        else:
            info = ModelInfo(name=TREND_RULE)
            direction, confidence = trend_rule(joined.features)
        return self._prediction(joined, ctx, ids, direction, confidence, info, fallback=True)

    def _prediction(self, joined: JoinedFeatures, ctx: Context, ids: dict, direction: str, confidence: float,
                    info: ModelInfo, *, fallback: bool) -> PredictionGenerated:
        self.predictions += 1
        features = joined.features
        price = features.get("close")
        if price is None:
            price = features.get("mid_close")
        atr = features.get("atr_14")
        target = stop = None
        if direction != "HOLD" and price is not None and atr is not None and atr == atr:
            sign = 1.0 if direction == "BUY" else -1.0
            target, stop = price + sign * TARGET_ATR * atr, price - sign * STOP_ATR * atr
        return ctx.emit(
            PredictionGenerated,
            prediction=Prediction(direction=direction, confidence=confidence, target_price=target, stop_loss=stop,
                                  time_horizon=self._horizon),
            model=info,
            fallback=fallback,
            timeframe=joined.timeframe,
            bar_time=joined.bar_time,
            price=price,
            **ids,
        )

    def _transition(self, t: Transition, ctx: Context, ids: dict) -> CircuitBreakerStateChanged:
        self.transitions += 1
        return ctx.emit(CircuitBreakerStateChanged, breaker=t.breaker, from_state=t.from_state,
                        to_state=t.to_state, failures=t.failures, reason=t.reason, **ids)

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """LSTM windows, breaker, last good predictions, newest bar per symbol and the joins in
        flight. Plain builtins, so any checkpoint codec can hold it."""
        return {
            "model": self.card.name,
            "windows": {s: [v.tolist() for v in w] for s, w in self.windows.items()},
            "breaker": self.breaker.snapshot(),
            "last_good": msgspec.to_builtins(self.last_good),
            "last_bar": msgspec.to_builtins(self.last_bar),
            "joins": self.join.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.last_bar = msgspec.convert(state["last_bar"], dict[str, datetime])
        self.join.restore(state["joins"])
        if state.get("model") != self.card.name:
            return  # the state of another model (an upgrade): windows, breaker, answers start afresh
        k = len(self.card.inputs)
        self.windows = {}
        for symbol, rows in state["windows"].items():
            window = self.windows[symbol] = deque(maxlen=self.window)
            for row in rows:
                vector = np.array(row, dtype=np.float32).reshape(k)
                vector.flags.writeable = False
                window.append(vector)
        self.breaker.restore(state["breaker"])
        self.last_good = msgspec.convert(state["last_good"], dict[str, _LastGood])

    def close(self) -> None:
        """Let the worker thread end (it is a daemon: not calling this is harmless)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None


def trend_rule(features: Mapping[str, float | None]) -> tuple[str, float]:
    """The breaker's last-resort answer: BUY when close and SMA 20 are both above EMA 50,
    SELL when both below, else HOLD, at confidence 0.5; HOLD at 0 when any is undefined."""
    close, sma, ema = features.get("close"), features.get("sma_20"), features.get("ema_50")
    if close is None or sma is None or ema is None or not (close == close and sma == sma and ema == ema):
        return "HOLD", 0.0
    if close > ema and sma > ema:
        return "BUY", 0.5
    if close < ema and sma < ema:
        return "SELL", 0.5
    return "HOLD", 0.5


__all__ = ["FEATURE_GROUP_OF", "InferenceTimeout", "InputVector", "ModelService", "trend_rule"]
