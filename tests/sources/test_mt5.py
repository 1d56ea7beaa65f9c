"""The MetaTrader 5 source against ``mt5_standin`` (the real terminal needs Windows, see that
module's doc), serving real OANDA ticks as a broker on a UTC+3 server clock."""

from __future__ import annotations

import importlib.util
from itertools import islice

import pytest

from tradepipe.sources.files import iso_to_ms
from tradepipe.sources.mt5 import MT5Error, MT5Source

from . import mt5_standin

SERVER_UTC_OFFSET_S = 3 * 3600
TICKS = 30_000  # 2014-05-01 00:00 to 2014-05-02 07:32 UTC (EURUSD), 00:07 (NZDUSD)
EURUSD = mt5_standin.real_ticks("eurusd_ticks_2014-05.csv.gz", TICKS)
NZDUSD = mt5_standin.real_ticks("nzdusd_ticks_2014-05.csv.gz", TICKS)


def serve(**options) -> None:
    mt5_standin.serve(
        {"EURUSD": mt5_standin.as_server_ticks(EURUSD, SERVER_UTC_OFFSET_S),
         "NZDUSD": mt5_standin.as_server_ticks(NZDUSD, SERVER_UTC_OFFSET_S)},
        **options,
    )


@pytest.fixture(autouse=True)
def terminal():
    serve()
    yield mt5_standin
    mt5_standin.shutdown()


def source(symbols=("EURUSD",), **options) -> MT5Source:
    return MT5Source(mt5_standin, symbols, server_utc_offset_s=SERVER_UTC_OFFSET_S, **options)


def values(ticks) -> list[tuple]:
    return [(t.symbol, t.ts_ms, t.bid, t.ask, t.volume) for t in ticks]


def between(ticks, start: str, end: str) -> list:
    low, high = iso_to_ms(start), iso_to_ms(end)
    return [t for t in ticks if low <= t.ts_ms < high]


def test_history_gives_the_recorded_ticks_of_a_utc_range():
    # A window that does not fall on whole seconds: no tick lost or repeated at its edges.
    with source(history_window_ms=420_123) as mt5:
        got = list(mt5.history("2014-05-01T08:00:00Z", "2014-05-01T10:00:00.500Z"))
    expected = between(EURUSD, "2014-05-01T08:00:00Z", "2014-05-01T10:00:00.500Z")
    assert len(expected) > 2_000
    assert values(got) == values(expected)
    assert [t.position for t in got] == list(range(1, len(got) + 1))
    assert {(t.source, t.line) for t in got} == {("mt5", "")}


def test_history_of_two_symbols_is_merged_in_time_order():
    with source(("EURUSD", "NZDUSD")) as mt5:
        got = list(mt5.history("2014-05-01T00:00:00Z", "2014-05-02T00:00:00Z"))
    assert [t.ts_ms for t in got] == sorted(t.ts_ms for t in got)
    for symbol, recorded in (("EURUSD", EURUSD), ("NZDUSD", NZDUSD)):
        assert values(t for t in got if t.symbol == symbol) == values(
            between(recorded, "2014-05-01T00:00:00Z", "2014-05-02T00:00:00Z"))


def test_server_time_offset_converts_to_utc():
    # The terminal's clock is UTC+3: without the offset, "08:00" means 05:00 UTC and every
    # time comes out three hours late.
    with MT5Source(mt5_standin, ["EURUSD"]) as naive:
        got = list(naive.history("2014-05-01T08:00:00Z", "2014-05-01T08:30:00Z"))
    utc_truth = between(EURUSD, "2014-05-01T05:00:00Z", "2014-05-01T05:30:00Z")
    assert [t.ts_ms for t in got] == [t.ts_ms + SERVER_UTC_OFFSET_S * 1000 for t in utc_truth]
    with source() as mt5:
        latest = mt5.latest("EURUSD")
    assert (latest.ts_ms, latest.bid, latest.ask) == (EURUSD[-1].ts_ms, EURUSD[-1].bid, EURUSD[-1].ask)


def first_shared_millisecond(ticks) -> int:
    return next(i for i in range(1, len(ticks) - 1) if ticks[i].ts_ms == ticks[i + 1].ts_ms
                and ticks[i - 1].ts_ms // 1000 == ticks[i].ts_ms // 1000)


def test_polling_dedupes_the_boundary_millisecond():
    k = first_shared_millisecond(EURUSD)  # ticks k and k+1 share a millisecond; k-1 its second
    serve(visible={"EURUSD": k + 1})
    with source(poll_count=700) as mt5:
        assert values(mt5.poll()) == values([EURUSD[k]])  # the first poll starts at the current quote
        assert mt5.poll() == []
        mt5_standin.release("EURUSD", 1)  # a late tick in the millisecond already returned
        assert values(mt5.poll()) == values([EURUSD[k + 1]])
        mt5_standin.release("EURUSD", 5_000)
        polled = []
        while batch := mt5.poll():
            assert len(batch) <= 700
            polled += batch
    assert values(polled) == values(EURUSD[k + 2:k + 5_002])


def test_polling_continues_where_history_stopped():
    serve(visible={"EURUSD": 20_000})
    with source() as mt5:
        got = list(mt5.history("2014-05-01T12:00:00Z", "2014-05-01T13:00:00Z"))
        mt5_standin.release("EURUSD", 10_000)
        got += mt5.poll()
        assert mt5.poll() == []
    assert values(got) == values([t for t in EURUSD if t.ts_ms >= iso_to_ms("2014-05-01T12:00:00Z")])
    assert [t.position for t in got] == list(range(1, len(got) + 1))


def test_stream_polls_on_from_history():
    with source(poll_count=300) as mt5:
        start = list(mt5.history("2014-05-01T00:00:00Z", "2014-05-01T00:10:00Z"))
        streamed = list(islice(mt5.stream(poll_interval_s=0.0), 1_000))
    assert values(start + streamed) == values(EURUSD[:len(start) + 1_000])


def test_initialize_failure_reports_last_error():
    serve(login=5_012_345, password="right")
    with pytest.raises(MT5Error, match=r"initialize\(\) failed .*last_error -6 'Terminal: Authorization failed'") as failure:
        source(login=5_012_345, password="wrong").connect()
    assert (failure.value.code, failure.value.message) == (-6, "Terminal: Authorization failed")
    with pytest.raises(MT5Error, match="MetaTrader 5 x64 not found"):
        source(path="/nonexistent/terminal64.exe").connect()
    with source(login=5_012_345, password="right") as mt5:
        assert mt5.latest("EURUSD").ts_ms == EURUSD[-1].ts_ms


def test_copy_ticks_range_returning_none_is_a_clear_error():
    with source() as mt5:
        mt5_standin.shutdown()  # the terminal drops the IPC link behind the source's back
        with pytest.raises(MT5Error) as failure:
            list(mt5.history("2014-05-01T08:00:00Z", "2014-05-01T09:00:00Z"))
    assert (failure.value.code, failure.value.message) == (-10004, "No IPC connection")
    assert "copy_ticks_range('EURUSD', 2014-05-01 11:00:00, 2014-05-01 12:00:00, -1)" in str(failure.value)


def test_copy_ticks_from_returning_none_is_a_clear_error():
    with source(flags=99) as mt5:  # not a COPY_TICKS_* value
        with pytest.raises(MT5Error, match=r"copy_ticks_from\('EURUSD', .*last_error -2"):
            mt5.poll()


def test_unknown_symbol_is_a_clear_error_and_shuts_down():
    with pytest.raises(MT5Error, match="symbol 'XAUUSD' not found") as failure:
        source(("EURUSD", "XAUUSD")).connect()
    assert failure.value.call == "symbol_select('XAUUSD', True)"
    assert not mt5_standin.is_connected()


def test_close_shuts_the_terminal_connection_down():
    with source():
        assert mt5_standin.is_connected()
    assert not mt5_standin.is_connected()


@pytest.mark.skipif(importlib.util.find_spec("MetaTrader5") is not None, reason="MetaTrader5 is installed")
def test_without_the_metatrader5_package_the_error_says_where_it_runs():
    with pytest.raises(ImportError, match=r"only for Windows.*mt5linux\.MetaTrader5\(host, port\)"):
        MT5Source()


def test_standin_returns_the_real_packages_shapes():
    mt5_standin.initialize()
    ticks = mt5_standin.copy_ticks_from("EURUSD", 0, 5, mt5_standin.COPY_TICKS_ALL)
    assert ticks.dtype.names == ("time", "bid", "ask", "last", "volume", "time_msc", "flags", "volume_real")
    assert ticks["time_msc"][0] == EURUSD[0].ts_ms + SERVER_UTC_OFFSET_S * 1000
    tick = mt5_standin.symbol_info_tick("EURUSD")
    assert type(tick).__name__ == "Tick" and tick._fields == ticks.dtype.names
