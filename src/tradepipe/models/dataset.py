"""Labelled training data from recorded files (R6.1), built by the live feature code (R5.5).

Each file (ticks or bars, CSV or Parquet) is replayed through the data bridge and the live
feature services (:func:`tradepipe.features.history.build_feature_table`); each closed bar's
joined features become the scale-free model inputs of :func:`tradepipe.models.inputs.input_matrix`
(the same function the model services run), restricted to the inputs every file can give
(bar files have no microstructure), in ``MODEL_INPUTS`` order.

Label of the bar at row t, from the bar's mid ``close`` (published by feature engineering)::

    r = close[t + h] / close[t] - 1     BUY (2) if r > dead_band, SELL (0) if r < -dead_band,
                                        else HOLD (1)      (learners.CLASSES order)

Rows are dropped when the label is not known (fewer than h later bars in the file), when the
h bars ahead span a data gap (``bar_time[t+h] - bar_time[t] > 3 * h * timeframe``: a weekend,
a holiday, a feed outage), when an input is not finite (indicator warm-up, a zero ATR), and
when the ``window`` rows ending at t (the LSTM's input) are not all usable: in the same
file, finite, and without a gap (``bar_time[t] - bar_time[t-W+1] > 3 * (W-1) * timeframe``).
Every model is scored on the same rows.

Everything a row needs is known at its bar's close except the label and forward return; the
past-h return (``close[t] / close[t-h] - 1``, the previous-direction baseline) is known at t.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import numpy as np

from tradepipe.features.history import FeatureTable, build_feature_table
from tradepipe.models.inputs import MODEL_INPUTS, available_inputs, input_matrix
from tradepipe.models.learners import CLASSES
from tradepipe.sources.files import symbol_from_filename, timeframe_ms

SELL, HOLD, BUY = range(len(CLASSES))
GAP_FACTOR = 3  # a span of more than 3x its nominal length is a gap in the data
MIN_ROWS = 200  # labelled rows below which no honest walk-forward evaluation is possible

Progress = Callable[[str, int, int], None]


class DatasetError(ValueError):
    """The data cannot make a training set; the message says which file and why."""


def direction(returns: np.ndarray, dead_band: float) -> np.ndarray:
    """SELL / HOLD / BUY (0 / 1 / 2) of ``returns`` with a dead band: HOLD when
    ``-dead_band <= r <= dead_band``; NaN returns get HOLD (callers drop those rows)."""
    returns = np.asarray(returns, dtype=np.float64)
    out = np.full(returns.shape, HOLD, dtype=np.int64)
    out[returns > dead_band] = BUY
    out[returns < -dead_band] = SELL
    return out


class FileSummary(msgspec.Struct, frozen=True):
    name: str
    kind: str  # ticks | bars
    symbol: str
    sha256: str
    bars: int  # closed bars with joined features
    rows: int  # labelled rows kept
    first_bar: datetime | None
    last_bar: datetime | None
    dropped: dict[str, int]  # reason -> rows (a row counts under its first reason)


class Dataset(msgspec.Struct, frozen=True, kw_only=True):
    """Labelled rows of all files, sorted by bar time (stable: file order among equal times)."""

    inputs: tuple[str, ...]  # column order of x
    timeframe: str
    horizon: int
    dead_band: float
    window: int
    symbol: np.ndarray  # (n,) str
    bar_time_ms: np.ndarray  # (n,) int64, bar open time, UTC epoch ms
    label_end_ms: np.ndarray  # (n,) int64, bar time of row t+h (the label's last bar)
    close: np.ndarray  # (n,) float64, mid close
    forward_return: np.ndarray  # (n,) float64, close[t+h]/close[t]-1
    y: np.ndarray  # (n,) int64 label
    past_return: np.ndarray  # (n,) float64, close[t]/close[t-h]-1, known at t
    past_label: np.ndarray  # (n,) int64, its direction under the same dead band
    x: np.ndarray  # (n, k) float32
    frames: np.ndarray  # (m, k) float32: every bar of every file, the windows' source
    window_index: np.ndarray  # (n, window) int64 rows of ``frames``, oldest first
    data_hash: str
    data_files: dict[str, str]  # file name -> sha256 of its bytes
    files: list[FileSummary]

    def __len__(self) -> int:
        return len(self.y)

    def windows(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """The (len(rows), window, k) float32 input windows ending at ``rows`` (LSTM input)."""
        index = self.window_index if rows is None else self.window_index[rows]
        return self.frames[index]

    def features(self, rows: np.ndarray | slice | None, window: int) -> np.ndarray:
        """Model input of ``rows``: x (rows, k) when ``window`` is 1, else the last ``window``
        rows of each window (rows, window, k)."""
        if window == 1:
            return self.x if rows is None else self.x[rows]
        if window > self.window:
            raise DatasetError(f"a window of {window} rows was asked for; the dataset was built with {self.window}")
        return self.windows(rows)[:, self.window - window:]

    def bar_times(self, rows: np.ndarray | None = None) -> list[datetime]:
        ms = self.bar_time_ms if rows is None else self.bar_time_ms[rows]
        return [datetime.fromtimestamp(int(t) / 1000, tz=timezone.utc) for t in ms]

    def class_counts(self, rows: np.ndarray | None = None) -> dict[str, int]:
        y = self.y if rows is None else self.y[rows]
        counts = np.bincount(y, minlength=len(CLASSES))
        return {name: int(c) for name, c in zip(CLASSES, counts)}

    def summary(self) -> dict:
        first, last = (self.bar_times(np.array([0, len(self) - 1])) if len(self) else (None, None))
        return {
            "rows": len(self),
            "inputs": list(self.inputs),
            "timeframe": self.timeframe,
            "horizon": self.horizon,
            "dead_band": self.dead_band,
            "window": self.window,
            "symbols": sorted(set(self.symbol.tolist())),
            "first_bar": first.isoformat() if first else None,
            "last_bar": last.isoformat() if last else None,
            "class_counts": self.class_counts(),
            "class_share": {k: round(v / max(len(self), 1), 4) for k, v in self.class_counts().items()},
            "data_hash": self.data_hash,
            "files": [msgspec.to_builtins(f) for f in self.files],
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _feature_table(path: Path, symbol: str | None, timeframe: str) -> tuple[str, FeatureTable]:
    from tradepipe.sources import open_source

    try:  # missing files were refused before any was read (build_dataset)
        name_symbol = symbol or symbol_from_filename(path)
        kind, items = open_source(path, name_symbol)
        return kind, build_feature_table(items, symbol=name_symbol, timeframe=timeframe, kind=kind)
    except DatasetError:
        raise
    except (OSError, EOFError, ValueError, UnicodeError, zlib.error) as exc:  # corrupt gzip, unknown layout...
        raise DatasetError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None


class _FileRows(msgspec.Struct):
    """One file's labelled rows before concatenation."""

    summary: FileSummary
    keep: np.ndarray  # row indices of the file's table
    frames: np.ndarray
    symbol: str
    bar_ms: np.ndarray
    close: np.ndarray


def _label_file(table: FeatureTable, names: Sequence[str], *, horizon: int, dead_band: float, window: int,
                tf_ms: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(row indices kept, inputs of every row, drop counts) of one file's table."""
    n = len(table.bar_time)
    x = input_matrix(table.columns, table.values, names)
    bar_ms = np.array([int(t.timestamp() * 1000) for t in table.bar_time], dtype=np.int64)
    close = table.column("close")
    idx = np.arange(n)
    dropped: dict[str, int] = {}
    alive = np.ones(n, dtype=bool)

    def drop(reason: str, bad: np.ndarray) -> None:
        hit = alive & bad
        if hit.any():
            dropped[reason] = dropped.get(reason, 0) + int(hit.sum())
        alive[hit] = False

    ahead = idx + horizon
    has_ahead = ahead < n
    ahead_c = np.minimum(ahead, n - 1)
    behind = idx - horizon
    drop("no full horizon ahead (end of file)", ~has_ahead)
    drop("horizon spans a data gap", bar_ms[ahead_c] - bar_ms > GAP_FACTOR * horizon * tf_ms)
    drop("no past horizon (start of file)", behind < 0)
    finite = np.isfinite(x).all(axis=1) & np.isfinite(close) & (close > 0)
    drop("input not finite (warm-up)", ~finite)
    drop("close not finite", ~(np.isfinite(close[ahead_c]) & (close[ahead_c] > 0)))
    if window > 1:
        start = idx - (window - 1)
        drop("no full window (start of file)", start < 0)
        start_c = np.maximum(start, 0)
        # every row of the window finite: count non-finite rows in [start, t] with a cumulative sum
        bad_cum = np.concatenate([[0], np.cumsum(~finite)])
        drop("window has a non-finite input", bad_cum[idx + 1] - bad_cum[start_c] > 0)
        drop("window spans a data gap", bar_ms - bar_ms[start_c] > GAP_FACTOR * (window - 1) * tf_ms)
    return np.flatnonzero(alive), x, dropped


def build_dataset(
    paths: Sequence[str | Path],
    *,
    symbol: str | None = None,
    timeframe: str,
    horizon: int,
    dead_band: float,
    window: int = 1,
    min_rows: int = MIN_ROWS,
    on_progress: Progress | None = None,
) -> Dataset:
    """Labelled rows of ``paths`` (tick or bar files; ``symbol`` defaults to each file name's).

    Raises :class:`DatasetError` for no files, a missing or unreadable file, no input common
    to all files, or fewer than ``min_rows`` labelled rows.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("no data files given")
    if horizon < 1:
        raise DatasetError(f"horizon must be at least 1 bar, not {horizon}")
    if window < 1:
        raise DatasetError(f"window must be at least 1 row, not {window}")
    if dead_band < 0:
        raise DatasetError(f"dead band must be >= 0, not {dead_band}")
    tf_ms = timeframe_ms(timeframe)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"no such data file: {', '.join(missing)}")
    names_seen = [p.name for p in paths]
    if len(set(names_seen)) != len(names_seen):
        raise DatasetError(f"two data files share a name: {sorted(n for n in names_seen if names_seen.count(n) > 1)}")

    tables: list[tuple[Path, str, FeatureTable]] = []
    if on_progress:
        on_progress("features", 0, len(paths))
    for done, path in enumerate(paths, 1):
        kind, table = _feature_table(path, symbol, timeframe)
        tables.append((path, kind, table))
        if on_progress:
            on_progress("features", done, len(paths))

    usable = [set(available_inputs(t.columns)) for _, _, t in tables if t.bar_time]
    if not usable:
        raise DatasetError(f"no closed {timeframe} bar in any of the files: {', '.join(map(str, paths))}")
    common = set.intersection(*usable)
    names = tuple(n for n in MODEL_INPUTS if n in common)
    if not names:
        raise DatasetError("the files have no model input in common (see tradepipe.models.inputs)")

    per_file: list[_FileRows] = []
    data_files: dict[str, str] = {}
    for path, kind, table in tables:
        digest = file_sha256(path)
        data_files[path.name] = digest
        if not table.bar_time:
            per_file.append(_FileRows(
                summary=FileSummary(path.name, kind, table.symbol, digest, 0, 0, None, None, {}),
                keep=np.zeros(0, dtype=np.int64), frames=np.zeros((0, len(names)), dtype=np.float32),
                symbol=table.symbol, bar_ms=np.zeros(0, dtype=np.int64), close=np.zeros(0)))
            continue
        keep, x, dropped = _label_file(table, names, horizon=horizon, dead_band=dead_band, window=window, tf_ms=tf_ms)
        bar_ms = np.array([int(t.timestamp() * 1000) for t in table.bar_time], dtype=np.int64)
        per_file.append(_FileRows(
            summary=FileSummary(path.name, kind, table.symbol, digest, len(table.bar_time), len(keep),
                                table.bar_time[0], table.bar_time[-1], dropped),
            keep=keep, frames=x, symbol=table.symbol, bar_ms=bar_ms, close=table.column("close")))

    # concatenate: rows point into one frames array (every bar of every file)
    offsets = np.cumsum([0] + [len(f.frames) for f in per_file])
    frames = np.concatenate([f.frames for f in per_file]) if per_file else np.zeros((0, len(names)), np.float32)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "symbol", "bar", "end", "close", "fwd", "past", "frame_row")}
    for f, offset in zip(per_file, offsets):
        t = f.keep
        cols["symbol"].append(np.full(len(t), f.symbol, dtype=object))
        cols["bar"].append(f.bar_ms[t])
        cols["end"].append(f.bar_ms[t + horizon] if len(t) else np.zeros(0, np.int64))
        cols["close"].append(f.close[t])
        cols["fwd"].append(f.close[t + horizon] / f.close[t] - 1.0 if len(t) else np.zeros(0))
        cols["past"].append(f.close[t] / f.close[t - horizon] - 1.0 if len(t) else np.zeros(0))
        cols["frame_row"].append(t + offset)
    joined = {k: np.concatenate(v) for k, v in cols.items()}
    rows = len(joined["bar"])
    if rows < min_rows:
        detail = "; ".join(
            f"{f.summary.name}: {f.summary.bars} bars -> {f.summary.rows} rows"
            + (f" (dropped: {', '.join(f'{k} {v}' for k, v in f.summary.dropped.items())})" if f.summary.dropped else "")
            for f in per_file)
        raise DatasetError(
            f"too little data: {rows} labelled {timeframe} rows, at least {min_rows} are needed "
            f"(horizon {horizon}, window {window}); {detail}")

    order = np.argsort(joined["bar"], kind="stable")
    frame_row = joined["frame_row"][order]
    window_index = frame_row[:, None] + np.arange(-(window - 1), 1)[None, :]
    x = frames[frame_row]
    fwd = joined["fwd"][order]
    past = joined["past"][order]
    y = direction(fwd, dead_band)
    digest = hashlib.sha256()
    digest.update(",".join(names).encode())
    digest.update(f"|window={window}|".encode())
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return Dataset(
        inputs=names, timeframe=timeframe, horizon=horizon, dead_band=dead_band, window=window,
        symbol=joined["symbol"][order].astype(str), bar_time_ms=joined["bar"][order],
        label_end_ms=joined["end"][order], close=joined["close"][order], forward_return=fwd, y=y,
        past_return=past, past_label=direction(past, dead_band), x=x, frames=frames, window_index=window_index,
        data_hash=digest.hexdigest(), data_files=data_files, files=[f.summary for f in per_file],
    )
