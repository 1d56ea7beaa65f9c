"""Read-side benchmark (issue 7, R8.1): how fast the projections rebuild from the bus.

    python bench/read_side.py [--repeat R] [--write BENCHMARKS.md]

Workload: the shipped sample (3 days of EURUSD and NZDUSD ticks) run through the ema-cross
pipeline into a SQLite bus file, once. Then, each timed on the same bus:

- ``bare replay`` (the anchor, the ceiling of any projection): every record of the topics a
  projection reads, polled from the bus and decoded, nothing stored;
- ``transactional on SQLite`` / ``on PostgreSQL``: ``read.projections.rebuild`` (one
  transaction per batch of 1,000 events with its inbox rows and positions);
- ``analytics on chDB``: ``read.analytics.rebuild_analytics`` (ticks, bars, features,
  predictions, signals, orders into ReplacingMergeTree tables).

Figures are medians of ``--repeat`` runs; each run starts from an empty store.
PostgreSQL is the machine's 127.0.0.1:5432 (database ``test``, a scratch schema dropped
afterwards).
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from common import machine_note, median_time, report  # bench/ is on sys.path
from tradepipe.bus import open_bus
from tradepipe.config import Settings
from tradepipe.events import JsonCodec
from tradepipe.pipeline import RunRequest, run_pipeline
from tradepipe.read import analytics, projections
from tradepipe.sources import sample_paths

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def bare_replay(bus, topics) -> int:
    codec = JsonCodec()
    consumer = bus.consumer(None)
    consumer.assign(bus.partitions_of(topics))
    ends = {t: bus.end_offsets(t) for t in topics}
    remaining = sum(sum(e.values()) for e in ends.values())
    count = 0
    try:
        while count < remaining:
            records = consumer.poll(1000, timeout_s=1.0)
            if not records:
                break
            for record in records:
                codec.decode(record.value)
            count += len(records)
    finally:
        consumer.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-read-"))
    bus = open_bus(f"sqlite:///{work / 'bus.db'}", create=True)
    summary = run_pipeline(RunRequest(paths=sample_paths(), settings=Settings(), strategy="ema-cross"), bus)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    rows: list[tuple[str, int, float]] = []

    def timed(name: str, topics, run) -> None:
        records = sum(sum(bus.end_offsets(t).values()) for t in topics if t in bus.topics())
        seconds = median_time(run, args.repeat)
        rows.append((name, records, seconds))
        print(f"{name}: {records:,} records in {seconds:.2f} s", flush=True)

    timed("bare replay (transactional topics)", projections.TOPICS, lambda: bare_replay(bus, projections.TOPICS))
    for name, url in (("transactional on SQLite", f"sqlite:///{work / 'read.db'}"),
                      ("transactional on PostgreSQL", f"{POSTGRES}?schema={schema}")):
        store = projections.open_read_store(url)
        timed(name, projections.TOPICS, lambda store=store: projections.rebuild(bus, store))
        store.close()
    timed("bare replay (analytics topics)", analytics.TOPICS, lambda: bare_replay(bus, analytics.TOPICS))
    store = analytics.open_analytics_store(f"chdb:///{work / 'chdb'}")
    timed("analytics on chDB", analytics.TOPICS, lambda: analytics.rebuild_analytics(bus, store))
    store.close()
    bus.close()
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    anchors = {"transactional": rows[0][2] / rows[0][1], "analytics": rows[3][2] / rows[3][1]}
    date = datetime.now(timezone.utc).date().isoformat()
    lines = [
        "## Read side: projection rebuilds (R8.1)",
        "",
        f"`python bench/read_side.py --repeat {args.repeat} --write BENCHMARKS.md` on {date}, {machine_note()}. "
        f"The shipped sample through the ema-cross pipeline into a SQLite bus ({summary['ticks_in']:,} ticks, "
        f"{summary['orders']:,} orders); each projection rebuilt from scratch, median of {args.repeat}. "
        "*Bare replay* polls and decodes the same records and stores nothing: the ceiling.",
        "",
        "| what | records | seconds | records/s | vs bare replay |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, records, seconds in rows:
        kind = "analytics" if "analytics" in name else "transactional"
        ratio = anchors[kind] * records / seconds
        lines.append(f"| {name} | {records:,} | {seconds:.2f} | {records / seconds:,.0f} | {ratio:.0%} |")
    report(lines, args.write)


if __name__ == "__main__":
    main()
