"""Readers of recorded market data, on the real OANDA files and formats derived from them."""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta, timezone
from itertools import islice

import pytest

from tradepipe.sources.files import (
    BAD_COLUMNS, BAD_NUMBER, BAD_TIMESTAMP, BadRow, RawBar, RawTick, detect_kind, read_bars,
    read_ticks, symbol_from_filename,
)

from .conftest import DATA_DIR, EURUSD_H1, EURUSD_M1, EURUSD_TICKS

UTC = timezone.utc
FIRST_TICK_MS = int(datetime(2014, 5, 1, 0, 0, 0, 292000, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def eurusd_summary() -> dict:
    """One pass over the 532,891-tick file: count, first/last tick, bad rows, ordering."""
    count, bad, first, last, ordered = 0, [], None, None, True
    for item in read_ticks(EURUSD_TICKS):
        if type(item) is BadRow:
            bad.append(item)
            continue
        if last is not None and item.ts_ms < last.ts_ms:
            ordered = False
        first = first or item
        last = item
        count += 1
    return {"count": count, "bad": bad, "first": first, "last": last, "ordered": ordered}


def test_real_tick_file_count_first_and_last_row(eurusd_summary):
    assert eurusd_summary["count"] == 532_891  # the data README's row count
    assert eurusd_summary["bad"] == []
    assert eurusd_summary["ordered"]
    first = eurusd_summary["first"]
    assert (first.symbol, first.ts_ms, first.bid, first.ask, first.volume) == (
        "EURUSD", FIRST_TICK_MS, 1.38676, 1.38686, 0.0
    )
    assert (first.position, first.source) == (2, "eurusd_ticks_2014-05.csv.gz")
    last = eurusd_summary["last"]
    assert last.ts_ms == int(datetime(2014, 5, 15, 23, 59, 56, 324000, tzinfo=UTC).timestamp() * 1000)
    assert (last.bid, last.ask, last.position) == (1.37164, 1.37175, 532_892)


def _real_rows(count: int) -> list[tuple[datetime, str, str]]:
    """The first real rows as (UTC time, bid text, ask text); they cross the 00:00 UTC date
    line in EST, so date conversion is exercised."""
    with gzip.open(EURUSD_TICKS, "rt") as f:
        next(f)
        rows = [line.strip().split(",") for line in islice(f, count)]
    return [(datetime.fromisoformat(ts), bid, ask) for ts, bid, ask, _ in rows]


def _millis(moment: datetime) -> str:
    return f"{moment.microsecond // 1000:03d}"


def _native(count: int) -> list[RawTick]:
    return list(islice(read_ticks(EURUSD_TICKS), count))


def test_histdata_rows_equal_native_after_est_to_utc(tmp_path):
    rows = _real_rows(300)
    est = timedelta(hours=-5)  # HistData: EST without DST
    lines = [f"{(t + est).strftime('%Y%m%d %H%M%S')}{_millis(t)},{bid},{ask},0" for t, bid, ask in rows]
    assert lines[0] == "20140430 190000292,1.38676,1.38686,0"
    path = tmp_path / "DAT_ASCII_EURUSD_T_201405.csv"
    path.write_text("\n".join(lines) + "\n")
    histdata = list(read_ticks(path))
    native = _native(300)
    assert [(t.symbol, t.ts_ms, t.bid, t.ask, t.volume) for t in histdata] == [
        (t.symbol, t.ts_ms, t.bid, t.ask, t.volume) for t in native
    ]
    assert histdata[0].position == 1  # no header: the first row is line 1


@pytest.mark.parametrize("time_column, suffix, shift", [
    ("Gmt time", "", timedelta(0)),
    ("Local time", " GMT+0200", timedelta(hours=2)),
])
def test_dukascopy_rows_equal_native(tmp_path, time_column, suffix, shift):
    rows = _real_rows(300)
    lines = [f"{time_column},Ask,Bid,AskVolume,BidVolume"] + [
        f"{(t + shift).strftime('%d.%m.%Y %H:%M:%S')}.{_millis(t)}{suffix},{ask},{bid},1.25,0.5"
        for t, bid, ask in rows
    ]
    path = tmp_path / "EURUSD_Ticks_01.05.2014-01.05.2014.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("\r\n".join(lines) + "\r\n")  # Dukascopy exports use CRLF
    dukascopy = list(read_ticks(path))
    native = _native(300)
    assert [(t.ts_ms, t.bid, t.ask, t.volume) for t in dukascopy] == [
        (t.ts_ms, t.bid, t.ask, 1.75) for t in native
    ]
    assert dukascopy[0].position == 2


def test_plain_csv_is_read_like_gzip(tmp_path):
    path = tmp_path / "eurusd_plain.csv"
    with gzip.open(EURUSD_TICKS, "rt") as f:
        path.write_text("".join(islice(f, 101)))
    assert [(t.ts_ms, t.bid, t.ask) for t in read_ticks(path)] == [
        (t.ts_ms, t.bid, t.ask) for t in _native(100)
    ]


def test_unparseable_rows_become_bad_rows_and_the_stream_continues(tmp_path):
    path = tmp_path / "eurusd_broken.csv"
    path.write_bytes(
        b"ts_utc,bid,ask,volume\n"
        b"2014-05-01T00:00:00.292Z,1.38676,1.38686,0\n"
        b"2014-05-01T00:00:00.920Z,1.38676\n"
        b"2014-05-01T00:00:01.000Z,1.3867x,1.38687,0\n"
        b"2014-05-01T25:00:01.000Z,1.38676,1.38687,0\n"
        b"2014-05-01T00:00:0x.000Z,1.38676,1.38687,0\n"
        b"\n"
        b"2014-05-01T00:00:02.5\xff,1.38676,1.38687,0\n"
        b"2014-05-01T00:00:03Z,1.38677,1.38688,0\n"
    )
    items = list(read_ticks(path))
    kinds = [(type(i).__name__, i.position, getattr(i, "code", None)) for i in items]
    assert kinds == [
        ("RawTick", 2, None),
        ("BadRow", 3, BAD_COLUMNS),
        ("BadRow", 4, BAD_NUMBER),
        ("BadRow", 5, BAD_TIMESTAMP),
        ("BadRow", 6, BAD_TIMESTAMP),
        ("BadRow", 8, BAD_TIMESTAMP),  # line 7 is blank: skipped, not an error
        ("RawTick", 9, None),
    ]
    assert items[1].line == "2014-05-01T00:00:00.920Z,1.38676"
    assert items[5].line.encode("utf-8", "surrogateescape") == b"2014-05-01T00:00:02.5\xff,1.38676,1.38687,0"
    # a timestamp without milliseconds takes the general ISO path
    assert items[-1].ts_ms == FIRST_TICK_MS - 292 + 3000


def test_symbol_from_file_name_or_argument_or_clear_error(tmp_path):
    assert symbol_from_filename("eurusd_ticks_2014-05.csv.gz") == "EURUSD"
    assert symbol_from_filename("DAT_ASCII_NZDUSD_T_201405.csv") == "NZDUSD"
    assert next(read_ticks(EURUSD_TICKS, symbol="EUR/USD")).symbol == "EUR/USD"
    unnamed = tmp_path / "ticks.csv"
    unnamed.write_text("ts_utc,bid,ask,volume\n2014-05-01T00:00:00.292Z,1.38676,1.38686,0\n")
    with pytest.raises(ValueError, match="--symbol"):
        read_ticks(unnamed).__next__()
    assert next(read_ticks(unnamed, symbol="EURUSD")).ts_ms == FIRST_TICK_MS


def test_detect_kind_on_real_files_and_unknown_layout(tmp_path):
    assert detect_kind(EURUSD_TICKS) == "ticks"
    assert detect_kind(EURUSD_M1) == "bars"
    assert detect_kind(EURUSD_H1) == "bars"
    odd = tmp_path / "eurusd_odd.csv"
    odd.write_text("time;price\n")
    with pytest.raises(ValueError, match="unknown tick file layout"):
        detect_kind(odd)


def test_real_m1_bars():
    bars = list(read_bars(EURUSD_M1))
    assert len(bars) == 15_366
    assert all(type(b) is RawBar for b in bars)
    first = bars[0]
    assert (first.symbol, first.timeframe, first.ts_ms) == ("EURUSD", "1m", FIRST_TICK_MS - 292)
    assert (first.open, first.high, first.low, first.close, first.volume, first.spread) == (
        1.38676, 1.38686, 1.38669, 1.38686, 43.0, 0.00011
    )
    # README: M1 volumes add up to the tick count of the matching tick file
    assert sum(b.volume for b in bars) == 532_891


def test_bar_timeframe_from_name_then_spacing_then_required(tmp_path):
    assert next(read_bars(EURUSD_H1)).timeframe == "1h"
    with gzip.open(EURUSD_H1, "rt") as f:
        head = "".join(islice(f, 30))
    unnamed = tmp_path / "eurusd_hourly.csv"
    unnamed.write_text(head)
    assert {b.timeframe for b in read_bars(unnamed)} == {"1h"}
    assert next(read_bars(unnamed, timeframe="4h")).timeframe == "4h"
    single = tmp_path / "eurusd_one.csv"
    single.write_text("".join(head.splitlines(keepends=True)[:2]))
    with pytest.raises(ValueError, match="--timeframe"):
        next(read_bars(single))


def test_every_real_file_is_detected():
    kinds = {p.name: detect_kind(p) for p in sorted(DATA_DIR.glob("*.csv.gz"))}
    assert kinds == {name: ("ticks" if "_ticks_" in name else "bars") for name in kinds}
