"""Tick-driven feature stage benchmark (issue 3): the bar builder (1m, 5m, 15m, 1h) and the
market microstructure service.

1. Memory (R10.5): synthetic ticks of three symbols (random-walk mids, spreads and irregular
   arrival, seeded) go through both services; the process's peak RSS and the size of the
   services' snapshots are printed after a warm-up, after 500k and after 5M ticks. Flat
   means the 5M figures equal the 500k ones: no state grows per tick. This runs first, so
   the throughput stage's tick list does not count.
2. Throughput: the 532,891 real EURUSD ticks of ../shared/data, turned into
   MarketDataReceived by the data bridge beforehand, then timed through each service's
   ``handle`` as a runner calls it (``ctx.begin`` + ``handle`` per tick); the bare
   ``ctx.begin`` loop is timed too, so ``handle`` alone is the difference. Median of
   ``--repeat`` runs, a fresh service each.

    python bench/feature_stage_memory.py [--small 500000] [--large 5000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec

from tradepipe.events.envelope import utc_from_ms
from tradepipe.events.types import MarketDataReceived, TickData
from tradepipe.runtime.service import Context, Service
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.data_bridge import DataBridge
from tradepipe.services.market_microstructure import MarketMicrostructure
from tradepipe.sources.files import read_ticks

EURUSD_TICKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eurusd_ticks_2014-05.csv.gz"
START_MS = 1_388_534_400_000  # 2014-01-01 00:00 UTC
SYMBOLS = (("EURUSD", 1.35, 0.00011), ("GBPUSD", 1.65, 0.00015), ("USDJPY", 102.0, 0.012))


def synthetic_ticks(count: int, seed: int = 7) -> Iterator[MarketDataReceived]:
    """``count`` ticks cycling through SYMBOLS, 1 ms to 3 s apart, generated lazily."""
    rng = random.Random(seed)
    mids = [mid for _, mid, _ in SYMBOLS]
    ts_ms = START_MS
    for n in range(count):
        i = n % len(SYMBOLS)
        symbol, _, typical_spread = SYMBOLS[i]
        mids[i] *= 1.0 + rng.gauss(0.0, 0.00005)
        half_spread = typical_spread * (0.5 + rng.random()) / 2
        ts_ms += rng.randint(1, 3000)
        at = utc_from_ms(ts_ms)
        yield MarketDataReceived(
            event_id=uuid.UUID(int=n), timestamp=at, symbol=symbol, source="synthetic",
            data=TickData(bid=mids[i] - half_spread, ask=mids[i] + half_spread, timestamp=at),
        )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def feed(services: list[tuple[Service, Context]], ticks) -> int:
    emitted = 0
    for event in ticks:
        for service, ctx in services:
            ctx.begin(event)
            emitted += len(service.handle(event, ctx))
    return emitted


def memory(small: int, large: int) -> None:
    services = [(service, Context(service.name)) for service in (BarBuilder(), MarketMicrostructure())]
    ticks = synthetic_ticks(large)
    print(f"memory: {large:,} synthetic ticks of {len(SYMBOLS)} symbols "
          "through bar-builder + market-microstructure")
    done = 0
    for target in (10_000, small, large):
        emitted = feed(services, (next(ticks) for _ in range(target - done)))
        done = target
        state_bytes = sum(len(msgspec.json.encode(service.snapshot())) for service, _ in services)
        print(f"  after {done:>9,} ticks: peak RSS {peak_rss_mib():7.1f} MiB, "
              f"snapshot {state_bytes:,} bytes, events emitted in this step {emitted:,}")


def median_seconds(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(repeat: int) -> None:
    bridge, bridge_ctx = DataBridge(), Context("data-bridge")
    ticks = [event for raw in read_ticks(EURUSD_TICKS) for event in bridge.handle_tick(raw, bridge_ctx)]
    print(f"throughput: {len(ticks):,} real EURUSD ticks ({EURUSD_TICKS.name}), median of {repeat}")

    def begin_only() -> None:
        ctx = Context("bench")
        for event in ticks:
            ctx.begin(event)

    begin_s = median_seconds(begin_only, repeat)
    print(f"  ctx.begin alone           {len(ticks) / begin_s:>12,.0f} ticks/s")
    for make in (BarBuilder, MarketMicrostructure):
        def through_service() -> None:
            service = make()
            feed([(service, Context(service.name))], ticks)

        loop_s = median_seconds(through_service, repeat)
        print(f"  {make.name:<24}  {len(ticks) / loop_s:>12,.0f} ticks/s with ctx.begin, "
              f"{len(ticks) / (loop_s - begin_s):>12,.0f} ticks/s handle alone "
              f"({(loop_s - begin_s) / len(ticks) * 1e6:.2f} us/tick)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=500_000)
    parser.add_argument("--large", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    memory(args.small, args.large)
    throughput(args.repeat)


if __name__ == "__main__":
    main()
