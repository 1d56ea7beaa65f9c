"""The pipeline as one job (``tradepipe run``): recorded data -> data bridge -> bars and
features -> bus.

The same services that run as separate processes on a bus run here in the in-process kernel,
with event time, so a run over the same files is deterministic; every event is written to the
bus for replay. Later stages (models, decisions) join the list in :func:`pipeline_services`.
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
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context, Service
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.data_bridge import DataBridge
from tradepipe.services.feature_engineering import FeatureEngineering
from tradepipe.services.market_microstructure import MarketMicrostructure
from tradepipe.services.technical_analysis import TechnicalAnalysis
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


class RunRequest(msgspec.Struct, frozen=True):
    paths: list[Path]
    settings: Settings
    symbol: str | None = None


def run_pipeline(request: RunRequest, bus: Bus, *, on_progress: Callable[[int], None] | None = None) -> dict:
    """Replay ``request.paths`` (tick or bar files) through the data bridge into ``bus``;
    return the run's summary."""
    settings = request.settings
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

    kernel = InProcessPipeline(feature_services(), bus, codec=codec)
    started = time.perf_counter()
    for path in request.paths:
        kind, items = open_source(path, request.symbol)
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
        "rejected_by_reason": dict(sorted(bridge.rejected_by_reason.items())),
        "symbols": dict(sorted(per_symbol.items())),
        "wall_s": round(wall_s, 3),
        "ticks_per_s": round(ticks_in / wall_s) if wall_s > 0 else 0,
    }
