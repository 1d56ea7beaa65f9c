"""Parquet ticks and bars: real OANDA data converted from CSV reads back to the same values."""

from __future__ import annotations

import gzip
import sys
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tradepipe.events.types import DeadLetter, MarketDataReceived
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources import open_source, parquet
from tradepipe.sources.files import (
    BAD_NUMBER, BAD_TIMESTAMP, BadRow, RawBar, RawTick, read_bars, read_ticks,
)
from tradepipe.sources.parquet import (
    read_parquet_bars, read_parquet_ticks, write_parquet_bars, write_parquet_ticks,
)

from .conftest import EURUSD_H1, EURUSD_M1, EURUSD_TICKS, bridge_context

FIRST_ROWS = 2_000


def _values(item: RawTick) -> tuple:
    return (item.symbol, item.ts_ms, item.bid, item.ask, item.volume)


@pytest.fixture(scope="module")
def first_ticks() -> list[RawTick]:
    return list(islice(read_ticks(EURUSD_TICKS), FIRST_ROWS))


@pytest.fixture(scope="module")
def first_timestamps() -> list[str]:
    """The ISO texts of the first rows, as written in the CSV file."""
    with gzip.open(EURUSD_TICKS, "rt") as f:
        next(f)
        return [line.split(",")[0] for line in islice(f, FIRST_ROWS)]


def test_all_real_eurusd_ticks_round_trip_csv_to_parquet(tmp_path):
    target = tmp_path / "eurusd_ticks_2014-05.parquet"
    assert write_parquet_ticks(target, read_ticks(EURUSD_TICKS)) == 532_891
    assert pq.ParquetFile(target).metadata.num_row_groups > 1  # read back in several batches
    count = 0
    for csv_tick, parquet_tick in zip(read_ticks(EURUSD_TICKS), read_parquet_ticks(target), strict=True):
        assert _values(parquet_tick) == _values(csv_tick)
        assert parquet_tick.position == csv_tick.position - 1  # row number vs line (header = 1)
        count += 1
    assert count == 532_891
    assert parquet_tick.source == "eurusd_ticks_2014-05.parquet" and parquet_tick.line == ""


@pytest.mark.parametrize("csv_path, timeframe", [(EURUSD_M1, "1m"), (EURUSD_H1, "1h")])
def test_real_bars_round_trip_with_the_timeframe_from_the_name(tmp_path, csv_path, timeframe):
    target = tmp_path / csv_path.name.replace(".csv.gz", ".parquet")
    write_parquet_bars(target, read_bars(csv_path))
    csv_bars = list(read_bars(csv_path))
    parquet_bars = list(read_parquet_bars(target))
    assert len(parquet_bars) == len(csv_bars) > 15_000
    fields = ("symbol", "timeframe", "ts_ms", "open", "high", "low", "close", "volume", "spread")
    for csv_bar, parquet_bar in zip(csv_bars, parquet_bars):
        assert [getattr(parquet_bar, f) for f in fields] == [getattr(csv_bar, f) for f in fields]
    assert parquet_bars[0].timeframe == timeframe


def test_bar_timeframe_from_spacing_when_the_name_has_none(tmp_path):
    target = tmp_path / "eurusd_bars.parquet"
    write_parquet_bars(target, islice(read_bars(EURUSD_M1), 100))
    assert {bar.timeframe for bar in read_parquet_bars(target)} == {"1m"}
    assert next(read_parquet_bars(target, timeframe="5m")).timeframe == "5m"


def _tick_table(time_column: pa.Array, ticks: list[RawTick]) -> pa.Table:
    return pa.table({
        "ts_utc": time_column,
        "bid": [t.bid for t in ticks],
        "ask": [t.ask for t in ticks],
        "volume": [t.volume for t in ticks],
    })


@pytest.mark.parametrize("unit, per_ms, sub_ms", [("ms", 1, 0), ("us", 1_000, 999), ("ns", 1_000_000, 999_999)])
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", None])
def test_timestamp_units_and_zones_give_utc_milliseconds(tmp_path, first_ticks, unit, per_ms, sub_ms, zone):
    # Sub-millisecond parts are floored; the zone label does not change the instant.
    counts = [t.ts_ms * per_ms + sub_ms for t in first_ticks]
    path = tmp_path / "eurusd_ticks.parquet"
    pq.write_table(_tick_table(pa.array(counts, pa.timestamp(unit, tz=zone)), first_ticks), path)
    assert [_values(t) for t in read_parquet_ticks(path)] == [_values(t) for t in first_ticks]


def test_second_timestamps(tmp_path, first_ticks):
    seconds = [t.ts_ms // 1000 for t in first_ticks]
    path = tmp_path / "eurusd_ticks.parquet"
    pq.write_table(_tick_table(pa.array(seconds, pa.timestamp("s", tz="UTC")), first_ticks), path)
    assert [t.ts_ms for t in read_parquet_ticks(path)] == [second * 1000 for second in seconds]


def test_iso_string_timestamps(tmp_path, first_ticks, first_timestamps):
    path = tmp_path / "eurusd_ticks.parquet"
    pq.write_table(_tick_table(pa.array(first_timestamps, pa.string()), first_ticks), path)
    assert [_values(t) for t in read_parquet_ticks(path)] == [_values(t) for t in first_ticks]


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 4 rows, so positions are checked across batch boundaries."""
    monkeypatch.setattr(parquet, "BATCH_ROWS", 4)


def test_nulls_and_bad_times_become_bad_rows_in_place(tmp_path, first_ticks, first_timestamps, small_batches):
    ticks = first_ticks[:12]
    times: list[str | None] = first_timestamps[:12]
    times[4] = None
    times[9] = "2014-05-01 25:00"
    table = _tick_table(pa.array(times, pa.string()), ticks)
    bids = table.column("bid").to_pylist()
    bids[6] = None
    table = table.set_column(1, "bid", pa.array(bids, pa.float64()))
    asks = table.column("ask").to_pylist()
    asks[6] = None
    table = table.set_column(2, "ask", pa.array(asks, pa.float64()))
    path = tmp_path / "eurusd_ticks.parquet"
    pq.write_table(table, path)

    items = list(read_parquet_ticks(path))
    assert [item.position for item in items] == list(range(1, 13))
    bad = {item.position: item for item in items if type(item) is BadRow}
    assert sorted(bad) == [5, 7, 10]
    assert (bad[5].code, bad[5].reason) == (BAD_TIMESTAMP, "null ts_utc (columns ts_utc,bid,ask,volume)")
    assert bad[5].line == f",{ticks[4].bid!r},{ticks[4].ask!r},0.0"
    assert (bad[7].code, bad[7].reason) == (BAD_NUMBER, "null bid, ask")
    assert bad[7].line == f"{first_timestamps[6]},,,0.0"
    assert bad[10].code == BAD_TIMESTAMP and "'2014-05-01 25:00'" in bad[10].reason
    good = [item for item in items if type(item) is RawTick]
    assert [_values(t) for t in good] == [_values(t) for i, t in enumerate(ticks) if i not in (4, 6, 9)]

    # The bridge dead-letters the bad rows and publishes the rest.
    bridge, ctx = DataBridge(), bridge_context()
    events = [event for item in items for event in bridge.handle_tick(item, ctx)]
    letters = [e for e in events if type(e) is DeadLetter]
    assert [(e.error_type, e.original) for e in letters] == [
        (BAD_TIMESTAMP, bad[5].line.encode()), (BAD_NUMBER, bad[7].line.encode()),
        (BAD_TIMESTAMP, bad[10].line.encode()),
    ]
    assert sum(type(e) is MarketDataReceived for e in events) == 9


def test_bar_spread_may_be_null_but_prices_may_not(tmp_path, small_batches):
    bars = list(islice(read_bars(EURUSD_M1), 6))
    bars[1] = RawBar(**{**{f: getattr(bars[1], f) for f in RawBar.__struct_fields__}, "spread": None})
    path = tmp_path / "eurusd_m1.parquet"
    write_parquet_bars(path, bars)
    table = pq.read_table(path)
    closes = table.column("close").to_pylist()
    closes[4] = None
    pq.write_table(table.set_column(4, "close", pa.array(closes, pa.float64())), path)

    items = list(read_parquet_bars(path))
    assert [type(item) for item in items] == [RawBar, RawBar, RawBar, RawBar, BadRow, RawBar]
    assert items[1].spread is None and items[0].spread == bars[0].spread
    assert (items[4].position, items[4].code, items[4].reason) == (5, BAD_NUMBER, "null close")


def test_bars_without_a_spread_column_have_unknown_spread(tmp_path):
    bars = list(islice(read_bars(EURUSD_M1), 3))
    path = tmp_path / "eurusd_m1.parquet"
    write_parquet_bars(path, bars)
    pq.write_table(pq.read_table(path).drop_columns(["spread"]), path)
    assert [(bar.close, bar.spread) for bar in read_parquet_bars(path)] == [(b.close, None) for b in bars]


def test_open_source_dispatches_on_content_not_name(tmp_path):
    parquet_ticks = tmp_path / "eurusd_ticks.data"  # Parquet recognised by its magic bytes
    write_parquet_ticks(parquet_ticks, islice(read_ticks(EURUSD_TICKS), 10))
    parquet_bars = tmp_path / "eurusd_m1.parquet"
    write_parquet_bars(parquet_bars, islice(read_bars(EURUSD_M1), 10))

    kind, items = open_source(parquet_ticks)
    assert kind == "ticks" and _values(next(items)) == _values(next(read_ticks(EURUSD_TICKS)))
    kind, items = open_source(parquet_bars, symbol="XYZ")
    first = next(items)
    assert (kind, type(first), first.symbol, first.timeframe) == ("bars", RawBar, "XYZ", "1m")
    kind, items = open_source(EURUSD_TICKS)
    assert kind == "ticks" and next(items) == next(read_ticks(EURUSD_TICKS))
    kind, items = open_source(EURUSD_M1, timeframe="1m")
    assert kind == "bars" and next(items) == next(read_bars(EURUSD_M1))


def test_parquet_of_another_shape_is_refused_before_reading(tmp_path):
    path = tmp_path / "eurusd_quotes.parquet"
    pq.write_table(pa.table({"ts_utc": ["2014-05-01T00:00:00Z"], "price": [1.3]}), path)
    with pytest.raises(ValueError, match="neither a tick nor a bar Parquet file"):
        open_source(path)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['bid', 'ask', 'volume'\]"):
        read_parquet_ticks(path)
    pq.write_table(pa.table({"ts_utc": [1.5], "bid": [1.3], "ask": [1.4], "volume": [0.0]}), path)
    with pytest.raises(ValueError, match="ts_utc has type double"):
        list(read_parquet_ticks(path))


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "eurusd_ticks.parquet"
    write_parquet_ticks(path, islice(read_ticks(EURUSD_TICKS), 3))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` sees when absent
    with pytest.raises(ImportError, match=r"pip install 'tradepipe\[parquet\]'"):
        read_parquet_ticks(path)
