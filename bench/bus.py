"""Bus and codec benchmark (issue 2): 1,000,000 small events through the in-memory and the
SQLite bus, against a plain Python callback loop over the same objects (the floor), plus
msgspec codec costs against the stdlib json module.

    python bench/bus.py [--events N] [--repeat R] [--write BENCHMARKS.md]

Each figure is the median of ``--repeat`` runs. Results are printed and, with ``--write``,
put into BENCHMARKS.md under "## Bus and codecs" (replacing that section).
"""

from __future__ import annotations


import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tradepipe.bus import open_bus
from tradepipe.events import JsonCodec, MarketDataReceived, MsgpackCodec, TickData
from tradepipe.runtime import Context
from common import machine_note, median_time, report  # bench/ is on sys.path

SYMBOLS = [b"EURUSD", b"NZDUSD", b"GBPUSD", b"USDJPY", b"AUDUSD", b"USDCAD", b"USDCHF", b"EURGBP"]
TOPIC = "bench"




def payloads(n: int) -> list[tuple[bytes, bytes]]:
    """(key, ~64-byte value) pairs, one symbol after another."""
    return [(SYMBOLS[i % 8], b'{"bid":1.38676,"ask":1.38686,"seq":%08d,"pad":"........"}' % i) for i in range(n)]


def plain_loop(items) -> int:
    seen = []
    callback = seen.append
    for _key, value in items:
        callback(value)
    return len(seen)


def through_bus(url: str, items, flush_every: int) -> int:
    seen = []
    callback = seen.append
    with open_bus(url) as bus:
        bus.create_topic(TOPIC, 8)
        producer = bus.producer()
        send = producer.send
        for i, (key, value) in enumerate(items, 1):
            send(TOPIC, value, key, timestamp_ms=i)  # the runner always passes event time
            if i % flush_every == 0:
                producer.flush()
        producer.flush()
        consumer = bus.consumer("bench", [TOPIC])
        while records := consumer.poll(10_000):
            for record in records:
                callback(record.value)
        consumer.commit()
        consumer.close()
    return len(seen)


@dataclass
class StdlibTick:
    eventId: str
    timestamp: str
    symbol: str
    source: str
    data: dict


def codec_costs(n: int, repeat: int) -> dict[str, float]:
    """ns per event to encode and decode a MarketDataReceived, msgspec vs stdlib json."""
    ctx = Context("bench")
    t0 = datetime(2014, 5, 5, tzinfo=timezone.utc)
    events = []
    for i in range(n):
        ts = t0 + timedelta(milliseconds=i)
        ctx.begin(None, key=b"%d" % i)
        ctx.clock.advance(ts)
        events.append(ctx.emit(MarketDataReceived, symbol="EURUSD", source="bench",
                               data=TickData(bid=1.38676, ask=1.38686, timestamp=ts)))
    out = {}
    for codec in (JsonCodec(), MsgpackCodec()):
        blobs = [codec.encode(e) for e in events]
        out[f"{codec.name} encode"] = median_time(lambda: [codec.encode(e) for e in events], repeat) / n * 1e9
        out[f"{codec.name} decode"] = median_time(lambda: [codec.decode(b) for b in blobs], repeat) / n * 1e9
    plain = [StdlibTick(str(e.event_id), e.timestamp.isoformat(), e.symbol, e.source,
                        {"bid": e.data.bid, "ask": e.data.ask, "volume": e.data.volume,
                         "timestamp": e.data.timestamp.isoformat()}) for e in events]
    blobs = [json.dumps(asdict(p)).encode() for p in plain]
    out["stdlib json encode (dataclass)"] = median_time(lambda: [json.dumps(asdict(p)).encode() for p in plain], repeat) / n * 1e9
    out["stdlib json decode (dataclass)"] = median_time(lambda: [StdlibTick(**json.loads(b)) for b in blobs], repeat) / n * 1e9
    return out




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flush-every", type=int, default=5000, help="SQLite producer batch size")
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md")
    args = parser.parse_args()
    n = args.events
    items = payloads(n)

    floor = median_time(lambda: plain_loop(items), args.repeat)
    memory = median_time(lambda: through_bus("memory://", items, args.flush_every), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(args.repeat))
        sqlite = median_time(
            lambda: through_bus(f"sqlite:///{tmp}/bench-{next(runs)}.db", items, args.flush_every), args.repeat
        )
    codecs = codec_costs(min(n, 100_000), args.repeat)

    rows = [
        ("plain callback loop (floor)", floor, 1.0),
        ("in-memory bus: send + poll + callback", memory, memory / floor),
        (f"SQLite bus (WAL, flush every {args.flush_every}): append + consume", sqlite, sqlite / floor),
    ]
    lines = [
        "## Bus and codecs",
        "",
        f"`python bench/bus.py --events {n} --repeat {args.repeat}` on {datetime.now(timezone.utc):%Y-%m-%d}, "
        f"{machine_note()}. Median of {args.repeat} runs; each run publishes {n:,} ~64-byte events with "
        "8 symbol keys to an 8-partition topic, then consumes them all in one group.",
        "",
        "| path | seconds | events/s | ns/event | x floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, seconds, ratio in rows:
        lines.append(f"| {name} | {seconds:.3f} | {n / seconds:,.0f} | {seconds / n * 1e9:,.0f} | {ratio:.2f} |")
    lines += [
        "",
        "Goals: in-memory within 3x of the floor; SQLite durable append + consume >= 100,000 events/s.",
        "",
        "| codec (MarketDataReceived) | ns/event |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {ns:,.0f} |" for name, ns in codecs.items()]
    report(lines, args.write)


if __name__ == "__main__":
    sys.exit(main())
