"""The whole feature stage (issue 3): ticks -> data bridge -> bars (1m, 5m, 15m, 1h) ->
feature engineering + technical analysis + market microstructure, in the in-process kernel.

1. Throughput on the 532,891 real EURUSD ticks of ../shared/data (read beforehand), timed
   from raw tick to the last FeaturesCalculated, with no bus and with the SQLite bus
   recording every event (what `tradepipe run` does). Median of ``--repeat`` runs.
2. Memory (R10.5): seeded synthetic ticks of three symbols through the same stage (no bus);
   peak RSS and the services' snapshot size after ``--small`` and after ``--large`` ticks.
   Flat means the two are equal: nothing grows per tick.

    python bench/feature_stage.py [--repeat 3] [--small 500000] [--large 5000000] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from common import SHARED_DATA, machine_note, median_time, report  # bench/ is on sys.path
from tradepipe.bus import open_bus
from tradepipe.pipeline import feature_services
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.files import read_ticks
from tradepipe.sources.synthetic import synthetic_ticks


def run_stage(ticks, bus=None) -> InProcessPipeline:
    kernel = InProcessPipeline(feature_services(), bus)
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    for tick in ticks:
        kernel.feed_all(bridge.handle_tick(tick, ctx))
    kernel.close()
    return kernel


def with_sqlite(ticks) -> None:
    with tempfile.TemporaryDirectory() as tmp, open_bus(f"sqlite:///{tmp}/bench.db") as bus:
        ensure_topics(bus)
        run_stage(ticks, bus)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(small: int, large: int) -> list[tuple[int, float, int]]:
    """(ticks so far, peak RSS MiB, snapshot bytes) after ``small`` and ``large`` ticks."""
    streams = [synthetic_ticks(symbol, n=large, seed=i) for i, symbol in enumerate(("EURUSD", "NZDUSD", "GBPUSD"))]
    mixed = (tick for group in zip(*streams) for tick in group)  # round-robin over the symbols
    kernel = InProcessPipeline(feature_services())
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    marks, fed = [], 0
    for target in (small, large):
        for tick in itertools.islice(mixed, target - fed):
            kernel.feed_all(bridge.handle_tick(tick, ctx))
        fed = target
        state = msgspec.msgpack.encode([s.snapshot() for s in kernel.services])
        marks.append((fed, peak_rss_mib(), len(state)))
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", type=int, default=500_000)
    parser.add_argument("--large", type=int, default=5_000_000)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    marks = memory(args.small, args.large)  # first, so the real tick list below does not count
    ticks = list(read_ticks(SHARED_DATA / "eurusd_ticks_2014-05.csv.gz"))
    counts = run_stage(ticks).counts
    bare = median_time(lambda: run_stage(ticks), args.repeat)
    recorded = median_time(lambda: with_sqlite(ticks), args.repeat)

    n = len(ticks)
    lines = [
        "## Feature stage",
        "",
        f"`python bench/feature_stage.py --repeat {args.repeat} --small {args.small} --large {args.large}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {machine_note()}.",
        "",
        f"Real EURUSD ticks (May 2014, {n:,} ticks) through bridge -> bars (4 timeframes) -> 3 feature services; "
        f"{counts['BarClosed']:,} bars, {counts['FeaturesCalculated']:,} FeaturesCalculated. Median of {args.repeat} runs.",
        "",
        "| path | seconds | ticks/s | µs/tick |",
        "|---|---:|---:|---:|",
        f"| in-process kernel, no bus | {bare:.2f} | {n / bare:,.0f} | {bare / n * 1e6:.1f} |",
        f"| same + every event to the SQLite bus (`tradepipe run`) | {recorded:.2f} | {n / recorded:,.0f} | {recorded / n * 1e6:.1f} |",
        "",
        "Memory (R10.5): seeded synthetic ticks of 3 symbols through the same stage, no bus.",
        "",
        "| after ticks | peak RSS (MiB) | services' snapshot (bytes) |",
        "|---:|---:|---:|",
        *[f"| {fed:,} | {rss:.1f} | {size:,} |" for fed, rss, size in marks],
        "",
    ]
    report(lines, args.write)


if __name__ == "__main__":
    main()
