"""Market data sources (R4.1): recorded CSV and Parquet files, the synthetic generator, MT5,
and the real data sample shipped with the package."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Literal

from tradepipe.sources.files import BadRow, RawBar, RawTick, detect_kind, read_bars, read_ticks
from tradepipe.sources.parquet import is_parquet, parquet_kind, read_parquet_bars, read_parquet_ticks


def sample_paths() -> list[Path]:
    """The shipped tick sample files (R9.3), sorted by name.

    Found through importlib.resources, so they resolve both in a source checkout and after
    a regular (non-editable) install, where the package lives in a directory on disk.
    """
    sample_dir = resources.files("tradepipe") / "sample"
    return sorted(Path(str(entry)) for entry in sample_dir.iterdir() if entry.name.endswith(".csv.gz"))


def open_source(
    path: str | Path, symbol: str | None = None, timeframe: str | None = None
) -> tuple[Literal["ticks", "bars"], Iterator[RawTick | RawBar | BadRow]]:
    """The kind of a recorded data file and a stream of its items.

    Parquet is recognised by its magic bytes and CSV (gzip or plain) is everything else; ticks
    or bars come from the Parquet columns or the CSV header. ``symbol`` defaults to the one in
    the file name and ``timeframe`` (bars only) to the name or the bar spacing. A file that is
    neither raises ValueError here, before any item is read.
    """
    if is_parquet(path):
        kind = parquet_kind(path)
        if kind == "ticks":
            return kind, read_parquet_ticks(path, symbol)
        return kind, read_parquet_bars(path, symbol, timeframe)
    kind = detect_kind(path)
    if kind == "ticks":
        return kind, read_ticks(path, symbol)
    return kind, read_bars(path, symbol, timeframe)


__all__ = ["open_source", "sample_paths"]
