"""The pipeline as one job (``tradepipe run``): recorded data -> data bridge -> bus.

This is the kernel later stages hang off (bars and features, models, decisions): the same
services, run in one process on the embedded SQLite bus with event time, so a run over the
same files is deterministic. Today it carries the data bridge stage.
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
from tradepipe.runtime.runner import ensure_topics, pump
from tradepipe.runtime.service import Context
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.files import detect_kind, read_bars, read_ticks
from tradepipe.sources.validation import TickValidator


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

    started = time.perf_counter()
    written = 0
    for path in request.paths:
        kind = detect_kind(path)
        if kind == "ticks":
            items, handle = read_ticks(path, request.symbol), bridge.handle_tick
        else:
            items, handle = read_bars(path, request.symbol), bridge.handle_bar
        before = bridge.rejected
        written += pump(counted(items, kind), handle, ctx, bus, codec=codec, on_batch=on_progress)
        rejected[kind] += bridge.rejected - before
    wall_s = time.perf_counter() - started
    ticks_in = items_in["ticks"]
    return {
        "bus": bus.url,
        "files": len(request.paths),
        "ticks_in": ticks_in,
        "ticks_rejected": rejected["ticks"],
        "bars_in": items_in["bars"],
        "bars_rejected": rejected["bars"],
        "events_written": written,
        "market_data_events": bridge.accepted,
        "dead_letters": bridge.rejected,
        "rejected_by_reason": dict(sorted(bridge.rejected_by_reason.items())),
        "symbols": dict(sorted(per_symbol.items())),
        "wall_s": round(wall_s, 3),
        "ticks_per_s": round(ticks_in / wall_s) if wall_s > 0 else 0,
    }
