"""The pipeline as one job (``tradepipe run``): recorded data -> data bridge -> bars and
features -> (with a model registry) model services -> ensemble -> bus.

The same services that run as separate processes on a bus run here in the in-process kernel,
with event time, so a run over the same files is deterministic; every event is written to the
bus for replay. Later stages (decisions) join the list after :func:`model_services`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec

from tradepipe.bus.base import Bus
from tradepipe.config import Settings
from tradepipe.events.codec import get_codec
from tradepipe.features.bars import TIMEFRAMES
from tradepipe.models.registry import ModelRegistry
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context, Service
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.data_bridge import DataBridge
from tradepipe.services.ensemble import EnsembleCoordinator
from tradepipe.services.feature_engineering import FeatureEngineering
from tradepipe.services.lightgbm_model import LightGBMService
from tradepipe.services.lstm_model import LSTMService
from tradepipe.services.market_microstructure import MarketMicrostructure
from tradepipe.services.model_service import ModelService
from tradepipe.services.technical_analysis import TechnicalAnalysis
from tradepipe.services.xgboost_model import XGBoostService
from tradepipe.sources import open_source
from tradepipe.sources.validation import TickValidator


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
    bands = {s.card.dead_band for s in services}
    dead_band = bands.pop() if len(bands) == 1 else models.dead_band_bps / 1e4
    services.append(EnsembleCoordinator([s.name for s in services], settings.ensemble, dead_band=dead_band))
    return services


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


class RunRequest(msgspec.Struct, frozen=True):
    paths: list[Path]
    settings: Settings
    symbol: str | None = None


def run_pipeline(
    request: RunRequest,
    bus: Bus,
    *,
    on_progress: Callable[[int], None] | None = None,
    registry: ModelRegistry | str | Path | None = None,
) -> dict:
    """Replay ``request.paths`` (tick or bar files) through the data bridge into ``bus``;
    return the run's summary. With a ``registry`` that holds models, the model services and
    the ensemble run too (:func:`model_services`); without one, or with an empty one, the run
    stops at the features."""
    settings = request.settings
    if registry is not None and not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    models = model_services(settings, registry) if registry is not None and not registry.is_empty() else []
    ensure_topics(bus, partitions=settings.bus.partitions)
    bridge = DataBridge(TickValidator(max_jump=settings.data.max_jump, allow_locked=settings.data.allow_locked))
    ctx = Context(bridge.name)
    codec = get_codec(settings.bus.codec)
    items_in: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    per_symbol: Counter[str] = Counter()

    def counted(items, kind: str):
        for item in items:
            items_in[kind] += 1
            per_symbol[item.symbol] += 1
            yield item

    services = feature_services() + models
    kernel = InProcessPipeline(services, bus, codec=codec)
    model_stage = [s for s in models if isinstance(s, ModelService)]
    started = time.perf_counter()
    sources = [(path, *open_source(path, request.symbol)) for path in request.paths]  # lazy: nothing read yet
    _check_models_fit_data(model_stage, sources)
    try:
        for path, kind, items in sources:
            handle = bridge.handle_tick if kind == "ticks" else bridge.handle_bar
            before, count = bridge.rejected, 0
            for count, item in enumerate(counted(items, kind), 1):
                kernel.feed_all(handle(item, ctx))
                if on_progress is not None and count % 5000 == 0:
                    on_progress(5000)
            if on_progress is not None:
                on_progress(count % 5000)
            rejected[kind] += bridge.rejected - before
        kernel.close()
    finally:
        for service in model_stage:
            service.close()
    wall_s = time.perf_counter() - started
    ticks_in = items_in["ticks"]
    return {
        "bus": bus.url,
        "files": len(request.paths),
        "ticks_in": ticks_in,
        "ticks_rejected": rejected["ticks"],
        "bars_in": items_in["bars"],
        "bars_rejected": rejected["bars"],
        "events_written": sum(kernel.counts.values()),
        "market_data_events": bridge.accepted,
        "bars": kernel.counts["BarClosed"],
        "features_events": kernel.counts["FeaturesCalculated"],
        "dead_letters": kernel.counts["DeadLetter"],
        "models": {s.kind: s.card.name for s in model_stage},
        "predictions": kernel.counts["PredictionGenerated"],
        "fallback_predictions": sum(s.fallbacks for s in model_stage),
        "model_failures": sum(s.failures for s in model_stage),
        "signals": kernel.counts["TradingSignalGenerated"],
        "breaker_transitions": kernel.counts["CircuitBreakerStateChanged"],
        "rejected_by_reason": dict(sorted(bridge.rejected_by_reason.items())),
        "symbols": dict(sorted(per_symbol.items())),
        "wall_s": round(wall_s, 3),
        "ticks_per_s": round(ticks_in / wall_s) if wall_s > 0 else 0,
    }
