"""The data bridge on real ticks and bars: events, dead letters, deterministic ids, event time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import islice

import pytest

from tradepipe.events.types import BarClosed, DeadLetter, MarketDataReceived
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources import sample_paths
from tradepipe.sources.files import RawTick, read_bars, read_ticks

from .conftest import EURUSD_M1, bridge_context

UTC = timezone.utc


def run(bridge: DataBridge, items, ctx=None) -> list:
    ctx = ctx or bridge_context()
    return [event for item in items for event in bridge.handle_tick(item, ctx)]


@pytest.fixture(scope="module")
def eurusd_sample():
    return next(p for p in sample_paths() if p.name.startswith("eurusd"))


@pytest.fixture(scope="module")
def sample_run(eurusd_sample):
    bridge = DataBridge()
    ticks = list(read_ticks(eurusd_sample))
    return bridge, ticks, run(bridge, ticks)


def test_real_sample_ticks_all_accepted_at_event_time(sample_run):
    bridge, ticks, events = sample_run
    assert (bridge.accepted, bridge.rejected) == (111_408, 0)
    assert all(type(e) is MarketDataReceived for e in events)
    first = events[0]
    at = datetime(2014, 5, 5, 0, 0, 23, 668000, tzinfo=UTC)
    assert (first.symbol, first.source, first.timestamp) == ("EURUSD", "eurusd_ticks_2014-05-05_07.csv.gz", at)
    assert (first.data.bid, first.data.ask, first.data.volume, first.data.timestamp) == (1.38710, 1.38726, 0.0, at)
    assert first.metadata.producer == "data-bridge"
    assert all(e.timestamp_ms == t.ts_ms for e, t in zip(events, ticks))  # event time, not wall time
    assert first.correlation_id is None and first.causation_id is None  # a root of the causal chain


def test_real_ticks_sharing_a_millisecond_are_all_kept(sample_run):
    _, ticks, events = sample_run
    shared = sum(1 for a, b in zip(ticks, ticks[1:]) if a.ts_ms == b.ts_ms)
    assert shared > 0
    assert len(events) == len(ticks)


def test_same_file_twice_gives_the_same_event_ids(sample_run, eurusd_sample):
    _, _, events = sample_run
    again = run(DataBridge(), islice(read_ticks(eurusd_sample), 5000))
    assert [e.event_id for e in again] == [e.event_id for e in events[:5000]]
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.event_id.version == 7 for e in again)


def test_bad_rows_and_rejected_ticks_become_dead_letters_with_the_original_bytes(tmp_path):
    path = tmp_path / "eurusd_mixed.csv"
    path.write_bytes(
        b"ts_utc,bid,ask,volume\n"
        b"2014-05-05T00:00:23.668Z,1.38710,1.38726,0\n"
        b"2014-05-05T00:00:24.000Z,1.2,1.1,0\n"
        b"2014-05-05T00:00:25.000Z,1.3871\xff,1.38726,0\n"
        b"2014-05-05T00:00:26.000Z,nan,1.38726,0\n"
        b"2014-05-05T00:00:27.000Z,1.38712,1.38727,0\n"
    )
    bridge = DataBridge()
    events = run(bridge, read_ticks(path))
    assert [type(e).__name__ for e in events] == [
        "MarketDataReceived", "DeadLetter", "DeadLetter", "DeadLetter", "MarketDataReceived"
    ]
    crossed, unreadable, nan = events[1:4]
    assert crossed.reason.startswith("rejected tick: crossed quote ask 1.1 < bid 1.2")
    assert (crossed.error_type, crossed.original_type, crossed.source_topic) == ("crossed", "tick", None)
    assert crossed.original == b"2014-05-05T00:00:24.000Z,1.2,1.1,0"
    assert crossed.timestamp == datetime(2014, 5, 5, 0, 0, 24, tzinfo=UTC)
    assert unreadable.error_type == "bad_number"
    assert unreadable.original == b"2014-05-05T00:00:25.000Z,1.3871\xff,1.38726,0"
    assert unreadable.timestamp == crossed.timestamp  # no time of its own: the item before
    assert nan.error_type == "not_finite" and nan.symbol == "EURUSD"
    assert (bridge.accepted, bridge.rejected) == (2, 3)
    assert bridge.rejected_by_reason == {"crossed": 1, "bad_number": 1, "not_finite": 1}
    assert events[-1].data.bid == 1.38712  # the stream went on


def test_the_bridge_never_raises_on_garbage(tmp_path):
    path = tmp_path / "eurusd_garbage.csv"
    garbage = [b"", b",,,", b"x,y,z,w", b"2014-13-45T99:99:99.999Z,1,1,1", b"\x00\x01,\xfe", b"-,-,-,-,-,-",
               b"2014-05-05T00:00:23.668Z,inf,-inf,0", b"2014-05-05T00:00:23.668Z,1e309,1,0"]
    path.write_bytes(b"ts_utc,bid,ask,volume\n" + b"\n".join(garbage) + b"\n")
    bridge = DataBridge()
    events = run(bridge, read_ticks(path))
    assert all(type(e) is DeadLetter for e in events)
    assert bridge.rejected == len(events) == len(garbage) - 1  # the empty line is skipped


def test_snapshot_restore_gives_the_events_of_an_uninterrupted_run(sample_run):
    _, ticks, events = sample_run
    extra = RawTick("EURUSD", ticks[999].ts_ms - 1, 1.3871, 1.38726, 0.0, 10**6, "replayed")
    stream = ticks[:2000] + [extra] + ticks[2000:3000]
    uninterrupted = run(DataBridge(), stream)
    first = DataBridge()
    before = run(first, stream[:1500])
    restarted = DataBridge()
    restarted.restore(first.snapshot())
    after = run(restarted, stream[1500:])
    assert before + after == uninterrupted
    assert restarted.rejected_by_reason == {"out_of_order": 1}
    assert [e.event_id for e in uninterrupted[:2000]] == [e.event_id for e in events[:2000]]


def test_real_m1_bar_becomes_bar_closed_at_its_close_time():
    ctx = bridge_context()
    bridge = DataBridge()
    bars = [e for bar in islice(read_bars(EURUSD_M1), 100) for e in bridge.handle_bar(bar, ctx)]
    assert all(type(e) is BarClosed for e in bars)
    first = bars[0]
    opened = datetime(2014, 5, 1, tzinfo=UTC)
    assert (first.symbol, first.timeframe, first.bar_time) == ("EURUSD", "1m", opened)
    assert first.timestamp == opened + timedelta(minutes=1)  # known only once closed
    assert (first.bid.open, first.bid.high, first.bid.low, first.bid.close) == (1.38676, 1.38686, 1.38669, 1.38686)
    assert first.ask.close == pytest.approx(1.38697, abs=1e-12)
    assert first.ask.low == pytest.approx(1.38680, abs=1e-12)
    assert first.mid.close == pytest.approx(1.386915, abs=1e-12)
    assert (first.tick_count, first.spread_mean, first.spread_max) == (43, 0.00011, 0.00011)
    assert bridge.accepted == 100
