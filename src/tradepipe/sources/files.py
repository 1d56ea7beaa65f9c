"""Readers for recorded market data files (R4.1): ticks and bars from CSV, gzip or plain.

Tick layouts, detected from the first line of the file:

* **tradepipe** (the layout of ``shared/data`` and of the shipped sample): header
  ``ts_utc,bid,ask,volume``, times like ``2014-05-01T00:00:00.292Z`` (UTC).
* **HistData.com** tick CSV: no header, rows like ``20140501 000000292,1.38676,1.38686,0``
  (``YYYYMMDD HHMMSSmmm``, bid, ask, volume). HistData times are **EST without daylight
  saving, i.e. fixed UTC-5 all year**; they are converted to UTC (+5 h).
* **Dukascopy** CSV export: header ``Gmt time,Ask,Bid,AskVolume,BidVolume`` (columns are
  found by name; note Ask comes before Bid), times like ``01.05.2014 00:00:00.292`` in GMT;
  volume = AskVolume + BidVolume. A ``Local time`` export is read the same way; a trailing
  ``GMT+0200`` style offset on its times is applied, and times without one are taken as GMT.

Bar files use ``ts_utc,open,high,low,close,volume,spread`` (bid OHLC, bar *open* time,
spread = ask close - bid close, empty when unknown).

A row that cannot be parsed does not stop the stream: it is yielded as a :class:`BadRow`
carrying its original text and a reason, so the data bridge can dead-letter it. Values that
parse but are wrong (NaN, crossed quotes, ...) are the validator's business, not the reader's.

Rows are numbered by their line in the file (1-based, the header is line 1), so an error
report points at ``sed -n {position}p FILE``.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
HISTDATA_UTC_OFFSET_MS = 5 * 3_600_000  # EST without DST: UTC = HistData time + 5 h

TICKS_HEADER = "ts_utc,bid,ask,volume"
BARS_HEADER = "ts_utc,open,high,low,close,volume,spread"

# Parse-error codes of BadRow (the bridge uses them as DeadLetter.error_type).
BAD_COLUMNS = "bad_columns"
BAD_NUMBER = "bad_number"
BAD_TIMESTAMP = "bad_timestamp"


class RawTick(msgspec.Struct, frozen=True, gc=False):
    """One quote as read from a file, before validation.

    ``position`` is the row's line number in the file and ``line`` its text (kept so that a
    tick the validator rejects can be dead-lettered with its original bytes).
    """

    symbol: str
    ts_ms: int  # UTC epoch milliseconds
    bid: float
    ask: float
    volume: float
    position: int
    source: str  # file name
    line: str = ""


class RawBar(msgspec.Struct, frozen=True, gc=False):
    """One bar as read from a file: bid OHLC at ``ts_ms`` (the bar's open time, UTC)."""

    symbol: str
    timeframe: str  # "1m", "1h", ...
    ts_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    spread: float | None  # ask close - bid close; None when the file has none
    position: int
    source: str
    line: str = ""


class BadRow(msgspec.Struct, frozen=True, gc=False):
    """A row that could not be parsed: ``code`` is one of BAD_COLUMNS, BAD_NUMBER,
    BAD_TIMESTAMP; ``line`` is the row's text without its line terminator."""

    symbol: str
    position: int
    line: str
    code: str
    reason: str
    source: str


def original_bytes(item: RawTick | RawBar | BadRow) -> bytes:
    """The row as it was in the file (undecodable bytes survive the round trip)."""
    return item.line.rstrip("\r\n").encode("utf-8", "surrogateescape")


# --- file level ----------------------------------------------------------------------------

def _open_text(path: Path) -> io.TextIOBase:
    """Open gzip (detected by its magic bytes, not the name) or plain text; ``newline=""``
    keeps each row's text exactly as in the file."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    return opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")


def _first_line(path: Path) -> str:
    with _open_text(path) as f:
        return f.readline().strip().lstrip("\ufeff")


_SYMBOL_IN_NAME = re.compile(r"(?<![A-Za-z])([A-Za-z]{6})(?![A-Za-z])")


def symbol_from_filename(path: str | Path) -> str:
    """The first 6-letter word of the file name, upper-cased (``eurusd_ticks_2014-05.csv.gz``
    and ``DAT_ASCII_EURUSD_T_201405.csv`` both give ``EURUSD``)."""
    name = Path(path).name
    match = _SYMBOL_IN_NAME.search(name)
    if match is None:
        raise ValueError(
            f"cannot infer the symbol from the file name {name!r} (expected a 6-letter pair "
            f"such as eurusd_ticks.csv); pass it explicitly, e.g. --symbol EURUSD"
        )
    return match.group(1).upper()


def detect_kind(path: str | Path) -> Literal["ticks", "bars"]:
    """Whether ``path`` holds ticks or bars, from its header (or first row, for HistData)."""
    first = _first_line(Path(path))
    if first.lower() == BARS_HEADER:
        return "bars"
    _tick_layout(first, Path(path).name)  # raises for an unknown layout
    return "ticks"


# --- timestamps ----------------------------------------------------------------------------

def ms_since_epoch(moment: datetime) -> int:
    """Epoch milliseconds of ``moment``, exact (no float rounding); naive datetimes are UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def iso_to_ms(text: str) -> int:
    """Any ISO-8601 timestamp (``Z`` or an offset; naive means UTC) to epoch ms."""
    return ms_since_epoch(datetime.fromisoformat(text))


def _minute_cached_parser(
    length: int,
    minute_end: int,
    seconds_at: int,
    millis_at: int,
    minute_ms: Callable[[str], int],
    other_length: Callable[[str], int],
) -> Callable[[str], int]:
    """A fast parser for fixed-layout timestamps of one file.

    Consecutive ticks nearly always share their minute, so the date-and-minute prefix
    (``text[:minute_end]``) is parsed once with the strict ``minute_ms`` and remembered;
    each row then costs one slice and one ``int`` of its ``SSmmm`` digits. A timestamp of
    another length goes to ``other_length``. Any ValueError means a bad timestamp.
    """
    last_minute = ""
    last_minute_ms = 0
    seconds_end, millis_end = seconds_at + 2, millis_at + 3

    def parse(text: str) -> int:
        nonlocal last_minute, last_minute_ms
        if len(text) != length:
            return other_length(text)
        minute = text[:minute_end]
        if minute != last_minute:
            last_minute_ms = minute_ms(minute)
            last_minute = minute
        sub_minute = text[seconds_at:seconds_end] + text[millis_at:millis_end]
        if not sub_minute.isdigit():
            raise ValueError(f"not a time: {text!r}")
        return last_minute_ms + int(sub_minute)

    return parse


def _iso_ticks_time() -> Callable[[str], int]:
    # 2014-05-01T00:00:00.292Z
    return _minute_cached_parser(
        24, 16, 17, 20, iso_to_ms, iso_to_ms
    )


def _histdata_minute_ms(minute: str) -> int:
    return ms_since_epoch(datetime.strptime(minute, "%Y%m%d %H%M")) + HISTDATA_UTC_OFFSET_MS


def _histdata_time() -> Callable[[str], int]:
    # 20140501 000000292 (EST, fixed UTC-5)
    def other_length(text: str) -> int:
        raise ValueError(f"not a HistData time (YYYYMMDD HHMMSSmmm): {text!r}")

    return _minute_cached_parser(18, 13, 13, 15, _histdata_minute_ms, other_length)


def _dukascopy_minute_ms(minute: str) -> int:
    return ms_since_epoch(datetime.strptime(minute, "%d.%m.%Y %H:%M"))


def _dukascopy_any_ms(text: str) -> int:
    """Slow path: with or without milliseconds, with an optional ``GMT+0200`` offset."""
    stamp, _, offset = text.strip().partition(" GMT")
    layout = "%d.%m.%Y %H:%M:%S.%f" if "." in stamp[10:] else "%d.%m.%Y %H:%M:%S"
    moment = datetime.strptime(stamp, layout)
    if offset:
        moment = moment.replace(tzinfo=datetime.strptime(offset, "%z").tzinfo)
    return ms_since_epoch(moment)


def _dukascopy_time() -> Callable[[str], int]:
    # 01.05.2014 00:00:00.292 (GMT)
    return _minute_cached_parser(23, 16, 17, 20, _dukascopy_minute_ms, _dukascopy_any_ms)


# --- ticks ---------------------------------------------------------------------------------

class _TickLayout(NamedTuple):
    name: str
    has_header: bool
    columns: int
    time: int
    bid: int
    ask: int
    volumes: tuple[int, ...]  # summed (Dukascopy splits ask and bid volume)
    time_parser: Callable[[], Callable[[str], int]]  # a fresh parser (with its cache) per file


_HISTDATA_ROW = re.compile(r"^\d{8} \d{9},")


def _tick_layout(first_line: str, name: str) -> _TickLayout:
    header = [column.strip().lower() for column in first_line.split(",")]
    if first_line.lower() == TICKS_HEADER:
        return _TickLayout("tradepipe", True, 4, 0, 1, 2, (3,), _iso_ticks_time)
    if header[0] in ("gmt time", "local time") and {"ask", "bid"} <= set(header):
        volumes = tuple(i for i, column in enumerate(header) if column.endswith("volume"))
        return _TickLayout(
            "dukascopy", True, len(header), 0, header.index("bid"), header.index("ask"),
            volumes, _dukascopy_time,
        )
    if _HISTDATA_ROW.match(first_line):
        return _TickLayout("histdata", False, 4, 0, 1, 2, (3,), _histdata_time)
    raise ValueError(
        f"{name}: unknown tick file layout (first line {first_line[:80]!r}); expected the "
        f"header {TICKS_HEADER!r}, a Dukascopy 'Gmt time,Ask,Bid,...' header, or HistData "
        f"rows 'YYYYMMDD HHMMSSmmm,bid,ask,volume'"
    )


def read_ticks(path: str | Path, symbol: str | None = None) -> Iterator[RawTick | BadRow]:
    """Stream the ticks of a tradepipe, HistData or Dukascopy CSV file (gzip or plain).

    Times are converted to UTC epoch ms (HistData: EST = UTC-5 all year, +5 h). Rows that
    cannot be parsed come out as :class:`BadRow` in their place; blank lines are skipped.
    ``symbol`` defaults to the one in the file name (see :func:`symbol_from_filename`).
    """
    path = Path(path)
    source = path.name
    symbol = symbol or symbol_from_filename(path)
    layout = _tick_layout(_first_line(path), source)
    parse_time = layout.time_parser()
    columns, time_col, bid_col, ask_col = layout.columns, layout.time, layout.bid, layout.ask
    first_volume, *more_volumes = layout.volumes
    with _open_text(path) as lines:
        if layout.has_header:
            next(lines)
        for position, line in enumerate(lines, start=2 if layout.has_header else 1):
            fields = line.split(",")
            if len(fields) != columns:
                if line.strip():
                    yield _bad_row(symbol, position, line, BAD_COLUMNS,
                                   f"{len(fields)} columns, expected {columns}", source)
                continue
            try:
                ts_ms = parse_time(fields[time_col])
            except (ValueError, OverflowError) as error:
                yield _bad_row(symbol, position, line, BAD_TIMESTAMP,
                               f"bad timestamp {fields[time_col]!r}: {error}", source)
                continue
            try:
                bid = float(fields[bid_col])
                ask = float(fields[ask_col])
                volume = float(fields[first_volume])
                for column in more_volumes:
                    volume += float(fields[column])
            except ValueError as error:
                yield _bad_row(symbol, position, line, BAD_NUMBER, str(error), source)
                continue
            yield RawTick(symbol, ts_ms, bid, ask, volume, position, source, line)


def _bad_row(symbol: str, position: int, line: str, code: str, reason: str, source: str) -> BadRow:
    return BadRow(symbol, position, line.rstrip("\r\n"), code, reason, source)


# --- bars ----------------------------------------------------------------------------------

_TIMEFRAME_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_TIMEFRAME = re.compile(r"^(\d+)([smhd])$")
_TIMEFRAME_IN_NAME = re.compile(r"_([mhd])(\d+)(?=[_.])", re.IGNORECASE)  # _m1_, _h1_, _m15.


def timeframe_ms(timeframe: str) -> int:
    """Length of a timeframe such as ``1m``, ``15m``, ``1h``, ``1d`` in milliseconds."""
    match = _TIMEFRAME.match(timeframe)
    if match is None:
        raise ValueError(f"not a timeframe: {timeframe!r} (expected e.g. 1m, 5m, 1h, 1d)")
    return int(match.group(1)) * _TIMEFRAME_UNIT_MS[match.group(2)]


def timeframe_from_ms(length_ms: int) -> str:
    """The inverse of :func:`timeframe_ms`, in the largest unit that divides ``length_ms``."""
    for unit in ("d", "h", "m", "s"):
        count, rest = divmod(length_ms, _TIMEFRAME_UNIT_MS[unit])
        if rest == 0 and count > 0:
            return f"{count}{unit}"
    raise ValueError(f"{length_ms} ms is not a whole number of seconds")


def timeframe_from_name(name: str) -> str | None:
    """The timeframe named in a file name (``_m1_`` → ``1m``, ``_h1.`` → ``1h``), else None."""
    match = _TIMEFRAME_IN_NAME.search(name)
    return f"{int(match.group(2))}{match.group(1).lower()}" if match else None


SPACING_ROWS = 20  # rows looked at to infer a timeframe from bar spacing


def read_bars(
    path: str | Path, symbol: str | None = None, timeframe: str | None = None
) -> Iterator[RawBar | BadRow]:
    """Stream the bars of a ``ts_utc,open,high,low,close,volume,spread`` file.

    ``timeframe`` defaults to the one in the file name (``_m1_`` → ``1m``, ``_h1_`` → ``1h``),
    else to the smallest spacing among the first rows (bars are absent for quiet periods, so
    the smallest gap is the bar length).
    """
    path = Path(path)
    source = path.name
    symbol = symbol or symbol_from_filename(path)
    first = _first_line(path)
    if first.lower() != BARS_HEADER:
        raise ValueError(f"{source}: not a bar file (header {first[:80]!r}, expected {BARS_HEADER!r})")
    timeframe = timeframe or timeframe_from_name(source) or _timeframe_from_spacing(path, symbol)
    timeframe_ms(timeframe)  # validates it
    with _open_text(path) as lines:
        next(lines)
        for position, line in enumerate(lines, start=2):
            yield _parse_bar(line, position, symbol, timeframe, source)


def _parse_bar(line: str, position: int, symbol: str, timeframe: str, source: str) -> RawBar | BadRow:
    fields = line.split(",")
    if len(fields) != 7:
        return _bad_row(symbol, position, line, BAD_COLUMNS, f"{len(fields)} columns, expected 7", source)
    try:
        ts_ms = iso_to_ms(fields[0])
    except ValueError as error:
        return _bad_row(symbol, position, line, BAD_TIMESTAMP, f"bad timestamp {fields[0]!r}: {error}", source)
    try:
        open_, high, low, close, volume = map(float, fields[1:6])
        spread_text = fields[6].strip()
        spread = float(spread_text) if spread_text else None
    except ValueError as error:
        return _bad_row(symbol, position, line, BAD_NUMBER, str(error), source)
    return RawBar(symbol, timeframe, ts_ms, open_, high, low, close, volume, spread, position, source, line)


def _timeframe_from_spacing(path: Path, symbol: str) -> str:
    with _open_text(path) as lines:
        next(lines)
        times = [
            bar.ts_ms
            for position, line in enumerate(islice(lines, SPACING_ROWS), start=2)
            if isinstance(bar := _parse_bar(line, position, symbol, "1m", path.name), RawBar)
        ]
    return timeframe_from_spacing(times, path.name)


def timeframe_from_spacing(times: Sequence[int], name: str) -> str:
    """The bar timeframe as the smallest gap between the first bar times (bars are absent for
    quiet periods, so the smallest gap is the bar length); ``name`` is for the error."""
    gaps = [later - earlier for earlier, later in zip(times, times[1:]) if later > earlier]
    if not gaps:
        raise ValueError(
            f"{name}: cannot infer the bar timeframe (no '_m1_'/'_h1_' in the name and too "
            f"few rows); pass it explicitly, e.g. --timeframe 1m"
        )
    return timeframe_from_ms(min(gaps))
