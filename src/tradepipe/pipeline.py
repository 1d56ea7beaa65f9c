"""The pipeline as one job (``tradepipe run``, ``tradepipe backtest``): recorded data -> data
bridge -> bars and features -> model services -> ensemble -> validator -> trading engine, with
the trade saga, the audit trail, performance analytics and the notifier alongside.

The same services that run as separate processes on a bus run here in the in-process kernel,
with event time, so a run over the same files is deterministic; every event is written to the
bus for replay. Files are merged in event-time order, so several symbols trade on one account
in the order their ticks happened.

Strategies (what makes the signals):

- ``models``: the three feature services, the model services and the ensemble (the product);
- ``ema-cross``: 1m bars and an EMA(10)/EMA(20) cross instead of features and models: the work
  NautilusTrader's EMA-cross example does, for the R10.2 comparison;
- ``features``: stop at the features (no models, no decisions).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

from tradepipe.bus.base import Bus
from tradepipe.config import Settings
from tradepipe.events.codec import get_codec
from tradepipe.events.envelope import Event, utc_from_ms
from tradepipe.events.types import BarClosed, OrderPlaced
from tradepipe.features.bars import TIMEFRAMES
from tradepipe.models.dataset import file_sha256
from tradepipe.models.registry import ModelCard, ModelRegistry
from tradepipe.ops.alerts import AlertRules
from tradepipe.ops.metrics import ConsumerLag, pipeline_groups
from tradepipe.read.audit_log import AuditLog
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context, Service
from tradepipe.services.analytics import PerformanceAnalytics
from tradepipe.services.api_commands import ApiCommandHandler
from tradepipe.services.audit_trail import AuditTrail
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.data_bridge import DataBridge
from tradepipe.services.ema_cross import EmaCrossSignal
from tradepipe.services.ensemble import EnsembleCoordinator
from tradepipe.services.feature_engineering import FeatureEngineering
from tradepipe.services.lightgbm_model import LightGBMService
from tradepipe.services.lstm_model import LSTMService
from tradepipe.services.market_microstructure import MarketMicrostructure
from tradepipe.services.model_service import ModelService
from tradepipe.services.notifier import Notifier
from tradepipe.services.technical_analysis import TechnicalAnalysis
from tradepipe.services.trade_saga import TradeSaga
from tradepipe.services.trading_engine import TradingEngine
from tradepipe.services.validator import PatternValidator
from tradepipe.services.xgboost_model import XGBoostService
from tradepipe.sources import open_source
from tradepipe.sources.files import timeframe_ms
from tradepipe.sources.validation import TickValidator

Strategy = Literal["models", "ema-cross", "features"]
STRATEGIES: tuple[str, ...] = Strategy.__args__
#: the validator's rules for the EMA cross: those that need no features (it computes none)
EMA_CROSS_RULES = ("confidence_floor", "trading_hours")


def feature_services(timeframes=TIMEFRAMES) -> list[Service]:
    """The feature stage, in dispatch order: bars first, so a tick's BarClosed events reach
    the bar-driven services in the same pass."""
    timeframes = tuple(timeframes)
    return [
        BarBuilder(timeframes=timeframes),
        MarketMicrostructure(timeframes=timeframes),
        FeatureEngineering(timeframes=timeframes),
        TechnicalAnalysis(timeframes=timeframes),
    ]


#: model service class per registry kind
MODEL_SERVICES: dict[str, type[ModelService]] = {
    cls.kind: cls for cls in (XGBoostService, LightGBMService, LSTMService)
}


def model_services(settings: Settings, registry: ModelRegistry | str | Path, *,
                   guard: str | None = None) -> list[Service]:
    """The model stage: one service per kind in ``settings.models.kinds``, each loading
    ``settings.models.version`` ("latest" or a number) of its kind from ``registry``, then the
    ensemble coordinator waiting for them. Raises ModelLoadError (with the path and the
    reason) for a missing, corrupt or mismatched model. ``guard`` (default: the
    ``models.inference_guard`` setting): how a hung model is stopped (see ModelService)."""
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    models = settings.models
    services: list[Service] = [
        MODEL_SERVICES[kind](registry.load(kind, models.version), models, guard=guard) for kind in models.kinds
    ]
    return services + [ensemble_for(settings, [s.card for s in services])]


def ensemble_for(settings: Settings, cards: list[ModelCard]) -> EnsembleCoordinator:
    """The ensemble over the model services of ``settings.models.kinds`` (``cards``: their
    models), scoring against the models' own dead band when they share one."""
    bands = {card.dead_band for card in cards}
    dead_band = bands.pop() if len(bands) == 1 else settings.models.dead_band_bps / 1e4
    names = [MODEL_SERVICES[kind].name for kind in settings.models.kinds]
    return EnsembleCoordinator(names, settings.ensemble, dead_band=dead_band)


def _check_models_fit_data(model_stage: list[ModelService], sources: list) -> None:
    """Refuse, before anything runs, models that need tick microstructure inputs on bar files:
    that group never arrives from bars, so every prediction would silently be a fallback."""
    tick_models = [s.card.name for s in model_stage if MarketMicrostructure.name in s.join.groups]
    bar_files = [Path(path).name for path, kind, _ in sources if kind == "bars"]
    if tick_models and bar_files:
        raise ValueError(
            f"{', '.join(tick_models)} use tick microstructure inputs, which bar files ({', '.join(bar_files)}) "
            "cannot feed: every prediction would be a fallback. Train models on bars into another registry "
            "(`tradepipe train --data BARS --registry DIR`, then `tradepipe run --registry DIR`), or run with --no-models"
        )


def broker_for(settings: Settings):
    """The broker of ``trading.broker``: None for paper (the engine builds it from its
    settings), the MetaTrader 5 adapter on the installed terminal package for ``mt5``."""
    if settings.trading.broker == "paper":
        return None
    from tradepipe.sources.mt5 import import_metatrader5
    from tradepipe.trading.brokers.mt5 import Mt5Broker

    trading = settings.trading
    return Mt5Broker(import_metatrader5(), magic=trading.mt5_magic, deviation_points=trading.mt5_deviation_points)


def decision_services(settings: Settings, *, strategy: Strategy = "models",
                      audit_log: AuditLog | None = None) -> list[Service]:
    """Everything after the signal: validator, trading engine, (for the models) the trade saga,
    the audit trail (with a log), performance analytics and the notifier, in dispatch order.
    The engine holds a position for the models' horizon; the EMA cross holds until its stop,
    target or the opposite cross."""
    log = None if audit_log is None else (lambda: audit_log)
    return [build() for build in decision_factories(settings, strategy=strategy, audit_log=log).values()]


def decision_factories(settings: Settings, *, strategy: Strategy = "models",
                       audit_log: Callable[[], AuditLog] | None = None) -> dict[str, Callable[[], Service]]:
    """:func:`decision_services` by name, each built only when called (the engine may connect
    to a broker, the audit trail opens its log)."""
    validator = settings.validator
    if strategy == "ema-cross":
        validator = validator.model_copy(update={"rules": tuple(r for r in validator.rules if r in EMA_CROSS_RULES)})
    horizon = settings.models.horizon if strategy == "models" else None
    factories: dict[str, Callable[[], Service]] = {
        PatternValidator.name: lambda: PatternValidator(validator),
        TradingEngine.name: lambda: TradingEngine(settings.trading, broker_for(settings), exit_after_bars=horizon),
    }
    if strategy == "models":
        factories[TradeSaga.name] = lambda: TradeSaga(settings.saga, timeframe=settings.models.timeframe)
    if audit_log is not None:
        factories[AuditTrail.name] = lambda: AuditTrail(audit_log(), cache_events=settings.audit.cache_events)
    factories[PerformanceAnalytics.name] = lambda: PerformanceAnalytics.from_settings(settings)
    factories[Notifier.name] = Notifier
    return factories


def in_sample(cards: list[ModelCard], paths: list[Path], symbol: str | None = None,
              start: datetime | None = None, end: datetime | None = None) -> list[str]:
    """Why a backtest of ``paths`` (within [start, end)) would test the models of ``cards``
    on data they were trained on, one reason per file; empty when it would not. A file is in
    sample when its bytes are a training file's (content hash), or when its time range, cut
    to [start, end), overlaps a model's training window (any symbol: a correlated pair over
    the same hours is no test either). The time range costs one read of each file."""
    trained = {digest: card.name for card in cards for digest in card.data_files.values()}
    reasons = []
    for path in paths:
        name = trained.get(file_sha256(path))
        if name is not None:
            reasons.append(f"{Path(path).name} is {name}'s training data")
            continue
        first, last = _time_range(path, symbol)
        if first is None:
            continue
        first, last = max(first, start or first), min(last, end or last)
        if first > last:  # --from/--to leave nothing of this file
            continue
        for card in cards:
            window = card.training_window
            if first <= window.end and window.start <= last:
                reasons.append(f"{Path(path).name} ({first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M}) overlaps "
                               f"{card.name}'s training window ({window.start:%Y-%m-%d %H:%M} .. "
                               f"{window.end:%Y-%m-%d %H:%M})")
                break
    return reasons


def _time_range(path: Path, symbol: str | None) -> tuple[datetime | None, datetime | None]:
    """The event times of a file's first and last readable item."""
    first = last = None
    for ts, _ in _event_times(Source(Path(path), *open_source(path, symbol))):
        if ts is not None:
            first = ts if first is None else first
            last = ts
    return (None, None) if first is None else (utc_from_ms(first), utc_from_ms(last))


def pipeline_services(settings: Settings, *, strategy: Strategy = "models",
                      registry: ModelRegistry | str | Path | None = None,
                      audit_log: AuditLog | None = None) -> list[Service]:
    """Every service after the data bridge, in dispatch order, for ``strategy`` (the
    ``models`` strategy needs a ``registry`` holding models): what ``run_pipeline`` runs and
    what the benchmarks time."""
    if strategy == "models":
        if registry is None:
            raise ValueError("the models strategy needs a model registry")
        signal_stage = feature_services() + model_services(settings, registry)
    elif strategy == "ema-cross":
        signal_stage = ema_cross_services()
    else:
        return feature_services()
    return signal_stage + decision_services(settings, strategy=strategy, audit_log=audit_log)


def ema_cross_services() -> list[Service]:
    return [BarBuilder(timeframes=("1m",)), EmaCrossSignal("1m")]


def service_factories(settings: Settings, *, strategy: Strategy = "models",
                      registry: ModelRegistry | str | Path | None = None,
                      audit_path: Path | None = None) -> dict[str, Callable[[], Service]]:
    """The services of :func:`pipeline_services` by name, each built only when called:
    ``tradepipe service NAME`` builds one (loading only its own model, opening the audit log
    only for the audit trail), and the distributed deployment lists the names."""
    factories: dict[str, Callable[[], Service]] = {}

    def add(stage: Callable[[], list[Service]]) -> None:
        """A cheap stage's services (no models, no I/O), each picked by name from a fresh stage."""
        for service in stage():
            factories[service.name] = lambda name=service.name: next(s for s in stage() if s.name == name)

    if strategy in ("models", "features"):
        add(feature_services)
    if strategy == "models":
        if registry is None:
            raise ValueError("the models strategy needs a model registry")
        registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
        models = settings.models
        for kind in models.kinds:
            factories[MODEL_SERVICES[kind].name] = lambda kind=kind: MODEL_SERVICES[kind](
                registry.load(kind, models.version), models)
        factories[EnsembleCoordinator.name] = lambda: ensemble_for(
            settings, [registry.card(*registry.resolve(kind, models.version)) for kind in models.kinds])
    elif strategy == "ema-cross":
        add(ema_cross_services)
    if strategy != "features":
        audit_log = None if audit_path is None else (lambda: AuditLog(audit_path))
        factories.update(decision_factories(settings, strategy=strategy, audit_log=audit_log))
        # the alert rules watch the deployment, every group's lag included (on their own
        # connection). Not in the in-process run: judging every tick, feature and prediction
        # there cost ~5 % of `tradepipe run`'s throughput
        names = [*factories, AlertRules.name]
        factories[AlertRules.name] = lambda: AlertRules.from_settings(
            settings, lag=ConsumerLag(settings.bus.url, pipeline_groups(names)))
    return factories


def gateway_factories(settings: Settings) -> dict[str, Callable[[], Service]]:
    """Services of the API gateway (R8.2) that also run as their own process: the command
    handler. Not part of the trading deployment (:func:`service_factories`): `tradepipe api`
    runs it too."""
    return {ApiCommandHandler.name: lambda: ApiCommandHandler(settings)}


class RunRequest(msgspec.Struct, frozen=True, kw_only=True):
    paths: list[Path]
    settings: Settings
    symbol: str | None = None
    strategy: Strategy = "models"
    start: datetime | None = None  # --from: items before it are skipped
    end: datetime | None = None  # --to: items from it on are skipped
    audit_path: Path | None = None  # the audit trail's log; None = no audit trail


def run_pipeline(
    request: RunRequest,
    bus: Bus,
    *,
    on_progress: Callable[[int], None] | None = None,
    registry: ModelRegistry | str | Path | None = None,
) -> dict:
    """Replay ``request.paths`` (tick or bar files, merged in event time) through the whole
    pipeline into ``bus``; return the run's summary. The ``models`` strategy needs a
    ``registry`` holding models; without one (or with an empty one) it stops at the features."""
    settings = request.settings
    strategy = request.strategy
    if registry is not None and not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    if strategy == "models" and (registry is None or registry.is_empty()):
        strategy = "features"
    audit_log = AuditLog(request.audit_path) if request.audit_path is not None and strategy != "features" else None
    try:
        services = pipeline_services(settings, strategy=strategy, registry=registry, audit_log=audit_log)
    except Exception:  # e.g. a model that does not load: leave no open log behind
        if audit_log is not None:
            audit_log.close()
        raise
    ensure_topics(bus, partitions=settings.bus.partitions, retention_ms=settings.bus.retention_ms)
    bridge = DataBridge(TickValidator(max_jump=settings.data.max_jump, allow_locked=settings.data.allow_locked))
    ctx = Context(bridge.name)
    codec = get_codec(settings.bus.codec)
    items_in: Counter[str] = Counter()
    per_symbol: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    probe = LatencyProbe()
    kernel = InProcessPipeline(services, bus, codec=codec, on_event=probe.on_event)
    model_stage = [s for s in services if isinstance(s, ModelService)]
    sources = open_sources(request.paths, request.symbol)  # lazy: nothing read yet
    _check_models_fit_data(model_stage, [(s.path, s.kind, None) for s in sources])
    start_ms = None if request.start is None else int(request.start.timestamp() * 1000)
    end_ms = None if request.end is None else int(request.end.timestamp() * 1000)
    handlers = {"ticks": bridge.handle_tick, "bars": bridge.handle_bar}
    tick_started, feed_all = probe.tick_started, kernel.feed_all
    started = time.perf_counter()
    count = 0
    try:
        for count, (kind, item) in enumerate(merged(sources, start_ms, end_ms), 1):
            items_in[kind] += 1
            per_symbol[item.symbol] += 1
            before = bridge.rejected
            tick_started()
            feed_all(handlers[kind](item, ctx))
            if bridge.rejected != before:
                rejected[kind] += 1
            if on_progress is not None and count % 5000 == 0:
                on_progress(5000)
        if on_progress is not None:
            on_progress(count % 5000)
        kernel.close()
    finally:
        for service in model_stage:
            service.close()
        if audit_log is not None:
            audit_log.close()
    wall_s = time.perf_counter() - started
    return _summary(request, strategy, bus, kernel, bridge, items_in, rejected, per_symbol, probe, wall_s)


def _summary(request, strategy, bus, kernel, bridge, items_in, rejected, per_symbol, probe, wall_s) -> dict:
    counts = kernel.counts
    services = {type(s): s for s in kernel.services}
    model_stage = [s for s in kernel.services if isinstance(s, ModelService)]
    ticks_in = items_in["ticks"]
    summary = {
        "bus": bus.url,
        "strategy": strategy,
        "files": len(request.paths),
        "ticks_in": ticks_in,
        "ticks_rejected": rejected["ticks"],
        "bars_in": items_in["bars"],
        "bars_rejected": rejected["bars"],
        "events_written": sum(counts.values()),
        "market_data_events": bridge.accepted,
        "bars": counts["BarClosed"],
        "features_events": counts["FeaturesCalculated"],
        "dead_letters": counts["DeadLetter"],
        "models": {s.kind: s.card.name for s in model_stage},
        "predictions": counts["PredictionGenerated"],
        "fallback_predictions": sum(s.fallbacks for s in model_stage),
        "model_failures": sum(s.failures for s in model_stage),
        "signals": counts["TradingSignalGenerated"],
        "breaker_transitions": counts["CircuitBreakerStateChanged"],
        "validated": counts["SignalValidated"],
        "rejected": counts["SignalRejected"],
        "orders": counts["OrderPlaced"],
        "fills": counts["OrderExecuted"],
        "orders_rejected": counts["OrderRejected"],
        "positions_closed": counts["PositionClosed"],
    }
    analytics = services.get(PerformanceAnalytics)
    if analytics is not None:
        figures = analytics.summary()
        summary |= {key: _rounded(figures[key]) for key in (
            "realized_pnl", "unrealized_pnl", "equity", "max_drawdown", "sharpe", "win_rate", "profit_factor")}
    engine = services.get(TradingEngine)
    if engine is not None:
        summary["trading_halted"] = engine.halted is not None
    saga = services.get(TradeSaga)
    if saga is not None:
        summary["sagas"] = dict(sorted(saga.outcomes.items()))
    summary |= {
        "latency_samples": len(probe.samples_ms),
        "latency_p50_ms": probe.percentile(50),
        "latency_p99_ms": probe.percentile(99),
        "rejected_by_reason": dict(sorted(bridge.rejected_by_reason.items())),
        "symbols": dict(sorted(per_symbol.items())),
        "wall_s": round(wall_s, 3),
        "ticks_per_s": round(ticks_in / wall_s) if wall_s > 0 else 0,
    }
    return summary


def _rounded(value):
    return round(value, 6) if isinstance(value, float) else value


# --- data: files merged in event time ----------------------------------------------------------

class Source(msgspec.Struct, frozen=True):
    path: Path
    kind: Literal["ticks", "bars"]
    items: Iterator


def open_sources(paths: list[Path], symbol: str | None) -> list[Source]:
    """Each file's kind and lazy item stream (nothing read yet); ValueError for a file that is
    neither ticks nor bars."""
    return [Source(Path(path), *open_source(path, symbol)) for path in paths]


def _event_times(source: Source) -> Iterator[tuple[int | None, object]]:
    """(event time in ms, item) of each item of ``source``: a tick at its time, a bar at its
    close; None for an unreadable row (it has no time)."""
    if source.kind == "ticks":
        for item in source.items:
            yield getattr(item, "ts_ms", None), item
        return
    lengths: dict[str, int] = {}
    for item in source.items:
        ts = getattr(item, "ts_ms", None)
        if ts is not None:
            ts += lengths.get(item.timeframe) or lengths.setdefault(item.timeframe, timeframe_ms(item.timeframe))
        yield ts, item


def merged(sources: list[Source], start_ms: int | None = None,
           end_ms: int | None = None) -> Iterator[tuple[str, object]]:
    """(kind, item) of every source in event-time order (a bar at its close), ties in file
    order; items outside [start_ms, end_ms) are skipped. An unreadable row keeps its place in
    its file (it takes the time of the row before it), so it is dead-lettered where it was."""

    def timed(index: int, source: Source):
        last = start_ms or 0
        for n, (ts, item) in enumerate(_event_times(source)):
            if ts is None:  # a BadRow: where the row before it was
                ts = last
            last = ts
            if (start_ms is None or ts >= start_ms) and (end_ms is None or ts < end_ms):
                yield ts, index, n, source.kind, item

    streams = [timed(i, s) for i, s in enumerate(sources)]
    # one file (the common backtest) needs no heap; the tuples never compare their items, as
    # (time, file index, row number) is unique
    for _, _, _, kind, item in (streams[0] if len(streams) == 1 else heapq.merge(*streams)):
        yield kind, item


# --- latency probe -----------------------------------------------------------------------------

class LatencyProbe:
    """R10.1: wall time inside the process from the tick that closed a bar (when the run
    started handling it, before the data bridge) to each OrderPlaced of a signal made on that
    bar. Ticks are marked by :meth:`tick_started`; the kernel's ``on_event`` hook sees the
    bar close (same correlationId as its tick) and the order."""

    __slots__ = ("_tick_started", "_tick_id", "_bar_started", "samples_ms", "_keep")

    def __init__(self, keep: int = 4096) -> None:
        self._tick_started = 0.0
        self._tick_id = None
        self._bar_started: dict = {}  # correlationId of a bar-closing tick -> its start
        self._keep = keep
        self.samples_ms: list[float] = []

    def tick_started(self) -> None:
        self._tick_started = time.perf_counter()

    def on_event(self, event: Event) -> None:
        kind = type(event)
        if kind is BarClosed:
            started = self._bar_started
            # the bar's tick roots its correlation; a bar read from a file is its own root
            started[event.correlation_id or event.event_id] = self._tick_started
            if len(started) > self._keep:  # bounded: a bar's order comes within its deadlines
                del started[next(iter(started))]
        elif kind is OrderPlaced and event.reason == "signal":
            started = self._bar_started.get(event.correlation_id)
            if started is not None:
                self.samples_ms.append((time.perf_counter() - started) * 1000.0)

    def percentile(self, q: float) -> float | None:
        if not self.samples_ms:
            return None
        return round(float(np.percentile(self.samples_ms, q)), 3)
