"""Cost of the per-tick path, piece by piece (R10.2: what a backtest pays on every tick).

On the real EURUSD ticks of ../shared/data, everything read before the clock starts (as
NautilusTrader's backtests start from QuoteTicks built by a data wrangler):

1. the data bridge alone: raw rows -> validation, deterministic id, MarketDataReceived;
2. the kernel's dispatch of those events (made beforehand by the bridge), no service;
3. the same + the bar builder, 1m bars only (what the EMA-cross backtest needs);
4. the same + the EMA(10/20) cross signal on those bars;
5. raw rows through all of it: bridge + kernel + 1m bars + EMA cross (bench/vs_nautilus.py
   part c as it stands);
6. raw rows through the whole feature stage (bars of 4 timeframes, 3 feature services).

The machines are shared and noisy: the median of ``--repeat`` runs and the best run are both
shown; compare pieces measured in the same run.

    python bench/tick_path.py [--repeat 5] [--limit N] [--only 1 3 ...]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
from collections.abc import Callable, Sequence

from common import SHARED_DATA, machine_note  # bench/ is on sys.path
from tradepipe.events import Event
from tradepipe.pipeline import feature_services
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context, Service
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.data_bridge import DataBridge
from tradepipe.services.ema_cross import EmaCrossSignal
from tradepipe.sources.files import RawTick, read_ticks

TICK_FILE = SHARED_DATA / "eurusd_ticks_2014-05.csv.gz"


def bars_1m() -> list[Service]:
    return [BarBuilder(timeframes=("1m",))]


def ema_cross() -> list[Service]:
    return [BarBuilder(timeframes=("1m",)), EmaCrossSignal()]


def bridge_only(ticks: Sequence[RawTick]) -> None:
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    handle = bridge.handle_tick
    for tick in ticks:
        handle(tick, ctx)


def dispatch(services: Callable[[], list[Service]]) -> Callable[[Sequence[Event]], None]:
    """A run of a kernel of ``services()`` (fresh per run) over events already bridged."""
    def run(events: Sequence[Event]) -> None:
        feed = InProcessPipeline(services()).feed
        for event in events:
            feed(event)
    return run


def bridged(services: Callable[[], list[Service]]) -> Callable[[Sequence[RawTick]], None]:
    """A run of the bridge feeding a kernel of ``services()`` (fresh per run) from raw rows."""
    def run(ticks: Sequence[RawTick]) -> None:
        kernel = InProcessPipeline(services())
        bridge, ctx = DataBridge(), Context(DataBridge.name)
        handle, feed_all = bridge.handle_tick, kernel.feed_all
        for tick in ticks:
            feed_all(handle(tick, ctx))
        kernel.close()
    return run


# (label, run, whether it takes the raw rows (else the bridged events))
PATHS: list[tuple[str, Callable[[Sequence], None], bool]] = [
    ("data bridge (raw row -> MarketDataReceived)", bridge_only, True),
    ("kernel dispatch, no service", dispatch(list), False),
    ("kernel + bar builder (1m)", dispatch(bars_1m), False),
    ("kernel + bar builder (1m) + EMA(10/20) cross", dispatch(ema_cross), False),
    ("raw rows: bridge + kernel + bar builder (1m) + EMA cross", bridged(ema_cross), True),
    ("raw rows: whole feature stage (4 timeframes, 3 feature services)", bridged(feature_services), True),
]


def timings(run: Callable[[Sequence], None], items: Sequence, repeat: int) -> tuple[float, float]:
    """(median, best) wall seconds of ``repeat`` runs of ``run(items)``."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(items)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N ticks")
    parser.add_argument("--only", type=int, nargs="*", help="run only these paths (numbers above)")
    args = parser.parse_args()

    ticks = [t for t in itertools.islice(read_ticks(TICK_FILE), args.limit) if type(t) is RawTick]
    n = len(ticks)
    print(f"{n:,} EURUSD ticks, {args.repeat} runs; {machine_note()}")
    print("| # | path | µs/tick (median) | µs/tick (best) | ticks/s (median) |")
    print("|---:|---|---:|---:|---:|")
    for number, (label, path, raw) in enumerate(PATHS, 1):
        if args.only and number not in args.only:
            continue
        # the bridged events exist only while a path over them runs: their half a million
        # GC-tracked UUIDs would slow every full collection of the other paths
        items = ticks if raw else bridge_all(ticks)
        gc.collect()
        median, best = timings(path, items, args.repeat)
        del items
        print(f"| {number} | {label} | {median / n * 1e6:.2f} | {best / n * 1e6:.2f} | {n / median:,.0f} |", flush=True)


def bridge_all(ticks: Sequence[RawTick]) -> list[Event]:
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    return [event for tick in ticks for event in bridge.handle_tick(tick, ctx)]


if __name__ == "__main__":
    main()
