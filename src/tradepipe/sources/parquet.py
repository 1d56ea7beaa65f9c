"""Parquet readers (and writers) for ticks and bars (R4.1), yielding the CSV readers' items.

Columns are found by name (others are ignored):

* ticks: ``ts_utc, bid, ask, volume``
* bars: ``ts_utc, open, high, low, close, volume, spread`` (bid OHLC at the bar's *open*
  time; ``spread`` may be null or absent = unknown, as an empty CSV field)

``ts_utc`` is either an Arrow timestamp of any unit (s, ms, us, ns; Arrow stores instants in
UTC whatever the zone label, and a zone-less timestamp is taken as UTC, as naive ISO times
are in :mod:`tradepipe.sources.files`) or an ISO-8601 string. Sub-millisecond parts are
floored to the millisecond.

Files are read one record batch at a time (:data:`BATCH_ROWS` rows), so memory does not
grow with the file. ``position`` is the row number in the file, 1-based. A row with a null
in a required column, or an unreadable string time, comes out as a :class:`BadRow` (code
``bad_timestamp`` or ``bad_number``) so the data bridge dead-letters it; its ``line`` is
the row's values written as a CSV row of the tradepipe layout (empty for nulls). Good rows
have ``line=""``: Parquet has no row text, and file plus position identify the row.

pyarrow is an optional dependency (``pip install 'tradepipe[parquet]'``), imported only
when a Parquet file is actually read or written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from tradepipe.sources.files import (
    BAD_NUMBER, BAD_TIMESTAMP, SPACING_ROWS, BadRow, RawBar, RawTick, iso_to_ms,
    symbol_from_filename, timeframe_from_name, timeframe_from_spacing, timeframe_ms,
)

BATCH_ROWS = 65_536
PARQUET_MAGIC = b"PAR1"
TIME_COLUMN = "ts_utc"
TICK_COLUMNS = ("bid", "ask", "volume")
BAR_COLUMNS = ("open", "high", "low", "close", "volume")
BAR_SPREAD_COLUMN = "spread"

_UNITS_PER_MS = {"ms": 1, "us": 1_000, "ns": 1_000_000}


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise ImportError(
            "reading or writing Parquet needs pyarrow, an optional extra of tradepipe: "
            "pip install 'tradepipe[parquet]'"
        ) from error
    return pyarrow, pyarrow.parquet


def is_parquet(path: str | Path) -> bool:
    """Whether the file starts with Parquet's magic bytes (the name does not matter)."""
    with open(path, "rb") as probe:
        return probe.read(4) == PARQUET_MAGIC


def parquet_kind(path: str | Path) -> Literal["ticks", "bars"]:
    """Whether a Parquet file holds ticks or bars, from its column names."""
    names = set(_schema_names(Path(path)))
    if {TIME_COLUMN, *TICK_COLUMNS} <= names:
        return "ticks"
    if {TIME_COLUMN, *BAR_COLUMNS} <= names:
        return "bars"
    raise ValueError(
        f"{Path(path).name}: neither a tick nor a bar Parquet file (columns {sorted(names)}); "
        f"expected {', '.join((TIME_COLUMN, *TICK_COLUMNS))} or "
        f"{', '.join((TIME_COLUMN, *BAR_COLUMNS))}[, {BAR_SPREAD_COLUMN}]"
    )


def _schema_names(path: Path) -> list[str]:
    _, pq = _pyarrow()
    return pq.ParquetFile(path).schema_arrow.names


def _require_columns(path: Path, required: Sequence[str]) -> list[str]:
    names = _schema_names(path)
    missing = [column for column in required if column not in names]
    if missing:
        raise ValueError(f"{path.name}: Parquet file lacks the column(s) {missing} (has {names})")
    return names


# --- reading -------------------------------------------------------------------------------

def read_parquet_ticks(path: str | Path, symbol: str | None = None) -> Iterator[RawTick | BadRow]:
    """Stream the ticks of a Parquet file (see the module doc for the columns).

    ``symbol`` defaults to the one in the file name. Missing columns or pyarrow raise here,
    not at the first ``next()``.
    """
    path = Path(path)
    symbol = symbol or symbol_from_filename(path)
    _require_columns(path, (TIME_COLUMN, *TICK_COLUMNS))
    source = path.name

    def ticks(first: int, times: list, bids: list, asks: list, volumes: list) -> Iterator[RawTick]:
        return map(RawTick, repeat(symbol), times, bids, asks, volumes,
                   range(first, first + len(times)), repeat(source))

    return _read_rows(path, symbol, TICK_COLUMNS, (), ticks)


def read_parquet_bars(
    path: str | Path, symbol: str | None = None, timeframe: str | None = None
) -> Iterator[RawBar | BadRow]:
    """Stream the bars of a Parquet file (see the module doc for the columns).

    ``timeframe`` defaults to the one in the file name (``_m1_`` → ``1m``), else to the
    smallest spacing among the first rows, as for CSV bar files.
    """
    path = Path(path)
    symbol = symbol or symbol_from_filename(path)
    names = _require_columns(path, (TIME_COLUMN, *BAR_COLUMNS))
    source = path.name
    timeframe = timeframe or timeframe_from_name(source) or timeframe_from_spacing(
        [ms for ms in _first_times(path) if ms is not None], source
    )
    timeframe_ms(timeframe)  # validates it
    optional = (BAR_SPREAD_COLUMN,) if BAR_SPREAD_COLUMN in names else ()

    def bars(first: int, times: list, opens: list, highs: list, lows: list, closes: list,
             volumes: list, spreads: Iterable[float | None] = repeat(None)) -> Iterator[RawBar]:
        return map(RawBar, repeat(symbol), repeat(timeframe), times, opens, highs, lows, closes,
                   volumes, spreads, range(first, first + len(times)), repeat(source))

    return _read_rows(path, symbol, BAR_COLUMNS, optional, bars)


def _first_times(path: Path) -> list[int | None]:
    pa, pq = _pyarrow()
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=SPACING_ROWS, columns=[TIME_COLUMN]), None)
    return [] if batch is None else _times_ms(batch.column(0), pa)[0]


def _read_rows(
    path: Path,
    symbol: str,
    required: Sequence[str],
    optional: Sequence[str],
    make_items: Callable[..., Iterator[Any]],
) -> Iterator[Any]:
    """The rows of ``path``, batch by batch: ``make_items(first_position, times,
    *required_values, *optional_values)`` builds the good rows of a batch without nulls;
    rows with a null in a required column become BadRows."""
    pa, pq = _pyarrow()
    parquet_file = pq.ParquetFile(path)
    columns = [TIME_COLUMN, *required, *optional]
    header = ",".join(columns)

    def rows() -> Iterator[Any]:
        first = 1
        for batch in parquet_file.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            times, time_errors = _times_ms(batch.column(TIME_COLUMN), pa)
            values = [_floats(batch.column(column), pa) for column in (*required, *optional)]
            needed = [times, *values[: len(required)]]
            if not any(None in column for column in needed):
                yield from make_items(first, times, *values)
            else:
                yield from _rows_with_nulls(
                    symbol, path.name, header, columns, times, time_errors, values, len(required),
                    first, make_items,
                )
            first += batch.num_rows

    return rows()


def _rows_with_nulls(
    symbol: str,
    source: str,
    header: str,
    columns: list[str],
    times: list[int | None],
    time_errors: dict[int, str],
    values: list[list[float | None]],
    required_count: int,
    first: int,
    make_items: Callable[..., Iterator[Any]],
) -> Iterator[Any]:
    """The slow path for a batch holding nulls: one row at a time."""
    for index, row in enumerate(zip(times, *values)):
        position = first + index
        ts_ms, numbers = row[0], row[1:]
        if ts_ms is not None and None not in numbers[:required_count]:
            yield from make_items(position, *([value] for value in row))
            continue
        text = ",".join(
            [time_errors.get(index, "") if ts_ms is None else _iso_ms(ts_ms)]
            + ["" if value is None else repr(value) for value in numbers]
        )
        if ts_ms is None:
            reason = f"bad timestamp {time_errors[index]!r}" if index in time_errors else f"null {TIME_COLUMN}"
            yield BadRow(symbol, position, text, BAD_TIMESTAMP, f"{reason} (columns {header})", source)
        else:
            nulls = [name for name, value in zip(columns[1:1 + required_count], numbers) if value is None]
            yield BadRow(symbol, position, text, BAD_NUMBER, f"null {', '.join(nulls)}", source)


def _floats(column: Any, pa: ModuleType) -> list[float | None]:
    column = column.cast(pa.float64())
    # numpy's tolist is several times faster than Arrow's to_pylist; nulls need the latter.
    return column.to_pylist() if column.null_count else column.to_numpy().tolist()


def _times_ms(column: Any, pa: ModuleType) -> tuple[list[int | None], dict[int, str]]:
    """Epoch ms per row (None for null or unreadable) and the text of unreadable strings."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        counts = column.fill_null(0).cast(pa.int64()).to_numpy()
        # floor division: an instant just before the epoch stays in the millisecond before
        millis = counts * 1_000 if kind.unit == "s" else counts // _UNITS_PER_MS[kind.unit]
        times = millis.tolist()
        if column.null_count:
            times = [None if null else ms for ms, null in zip(times, column.is_null().to_pylist())]
        return times, {}
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        parsed: list[int | None] = []
        errors: dict[int, str] = {}
        for index, text in enumerate(column.to_pylist()):
            try:
                parsed.append(None if text is None else iso_to_ms(text))
            except ValueError:
                parsed.append(None)
                errors[index] = text
        return parsed, errors
    raise ValueError(f"column {TIME_COLUMN} has type {kind}; expected a timestamp or an ISO-8601 string")


def _iso_ms(ms: int) -> str:
    """``2014-05-01T00:00:00.292Z``, the tradepipe CSV time layout."""
    seconds, millis = divmod(ms, 1000)
    return f"{datetime.fromtimestamp(seconds, timezone.utc):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


# --- writing -------------------------------------------------------------------------------

def write_parquet_ticks(path: str | Path, ticks: Iterable[RawTick]) -> int:
    """Write ticks as ``ts_utc`` (timestamp[ms, UTC]), ``bid, ask, volume`` (float64), in row
    groups of :data:`BATCH_ROWS`; returns the number of rows written."""
    pa, _ = _pyarrow()
    return _write(path, [(TIME_COLUMN, pa.timestamp("ms", tz="UTC"))]
                  + [(name, pa.float64()) for name in TICK_COLUMNS],
                  ((t.ts_ms, t.bid, t.ask, t.volume) for t in ticks))


def write_parquet_bars(path: str | Path, bars: Iterable[RawBar]) -> int:
    """Write bars as ``ts_utc`` (timestamp[ms, UTC]) and float64 ``open, high, low, close,
    volume, spread`` (spread null when unknown); returns the number of rows written."""
    pa, _ = _pyarrow()
    return _write(path, [(TIME_COLUMN, pa.timestamp("ms", tz="UTC"))]
                  + [(name, pa.float64()) for name in (*BAR_COLUMNS, BAR_SPREAD_COLUMN)],
                  ((b.ts_ms, b.open, b.high, b.low, b.close, b.volume, b.spread) for b in bars))


def _write(path: str | Path, fields: list[tuple[str, Any]], rows: Iterable[tuple]) -> int:
    pa, pq = _pyarrow()
    schema = pa.schema(fields)
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
        chunk: list[tuple] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == BATCH_ROWS:
                written += _write_chunk(writer, schema, chunk, pa)
                chunk = []
        if chunk or written == 0:
            written += _write_chunk(writer, schema, chunk, pa)
    return written


def _write_chunk(writer: Any, schema: Any, chunk: list[tuple], pa: ModuleType) -> int:
    columns = list(zip(*chunk)) if chunk else [[] for _ in schema]
    writer.write_batch(pa.RecordBatch.from_arrays(
        [pa.array(values, type=field.type) for values, field in zip(columns, schema)], schema=schema
    ))
    return len(chunk)
