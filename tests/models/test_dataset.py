"""R6.1 labelled data: labels with a dead band, dropped rows, clear errors (tradepipe.models.dataset)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from tradepipe.features.history import build_feature_table
from tradepipe.models.dataset import BUY, HOLD, SELL, DatasetError, build_dataset, direction
from tradepipe.models.inputs import available_inputs, input_matrix
from tradepipe.sources import open_source, sample_paths

from .conftest import head_of

START_MS = int(datetime(2014, 5, 5, tzinfo=timezone.utc).timestamp() * 1000)
SPREAD = 0.0001
DEAD_BAND = 1e-4  # 1 bp
H = 5
JUMPS = {150: +0.0006, 220: -0.0006, 300: +0.0006}  # ~5.5 bps, far outside the dead band


def handmade_closes(n: int = 400, seed: int = 3) -> np.ndarray:
    """Bid closes near 1.1: +-1e-5 noise (any 5 bars move less than 0.5 bp, inside the 1 bp
    dead band) and three jumps of 6 pips at known bars."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([-1e-5, 0.0, 1e-5], size=n)
    steps[0] = 0.0
    for at, jump in JUMPS.items():
        if at < n:
            steps[at] = jump
    return np.round(1.1 + np.cumsum(steps), 5)


def write_bars(path: Path, closes: np.ndarray, times_ms: np.ndarray | None = None) -> Path:
    """A bar file (``ts_utc,open,high,low,close,volume,spread``, bid prices) of ``closes``."""
    if times_ms is None:
        times_ms = START_MS + 60_000 * np.arange(len(closes))
    lines = ["ts_utc,open,high,low,close,volume,spread"]
    previous = closes[0]
    for t, close in zip(times_ms, closes):
        stamp = datetime.fromtimestamp(int(t) / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        high, low = max(previous, close) + 2e-5, min(previous, close) - 2e-5
        lines.append(f"{stamp},{previous:.5f},{high:.5f},{low:.5f},{close:.5f},10,{SPREAD}")
        previous = close
    path.write_text("\n".join(lines) + "\n")
    return path


def test_direction_has_a_dead_band():
    r = np.array([2e-4, -2e-4, 1e-4, -1e-4, 0.99e-4, -0.99e-4, 0.0, 1.01e-4, -1.01e-4])
    assert direction(r, 1e-4).tolist() == [BUY, SELL, HOLD, HOLD, HOLD, HOLD, HOLD, BUY, SELL]
    assert direction(r, 0.0).tolist() == [BUY, SELL, BUY, SELL, BUY, SELL, HOLD, BUY, SELL]
    assert (SELL, HOLD, BUY) == (0, 1, 2)  # learners.CLASSES order


def test_labels_of_a_handmade_close_series(tmp_path):
    closes = handmade_closes()
    path = write_bars(tmp_path / "eurusd_m1_handmade.csv", closes)
    ds = build_dataset([path], timeframe="1m", horizon=H, dead_band=DEAD_BAND, window=1, min_rows=50)
    index = ((ds.bar_time_ms - START_MS) // 60_000).astype(int)  # row number in the file
    mid = closes + SPREAD / 2  # the bridge's mid close of a bar file: bid + spread / 2
    expected = np.full(len(closes), HOLD)
    for at, jump in JUMPS.items():
        expected[at - H:at] = BUY if jump > 0 else SELL  # the jump is inside (t, t + h]
    assert ds.y.tolist() == expected[index].tolist()
    assert {SELL, HOLD, BUY} == set(ds.y.tolist())
    np.testing.assert_allclose(ds.forward_return, mid[index + H] / mid[index] - 1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ds.close, mid[index], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.past_return, mid[index] / mid[index - H] - 1, rtol=0, atol=1e-15)
    assert ds.past_label.tolist() == direction(ds.past_return, DEAD_BAND).tolist()
    assert (ds.label_end_ms == ds.bar_time_ms + H * 60_000).all()
    # the last H rows have no label; warm-up rows have no finite inputs
    assert index.max() == len(closes) - 1 - H
    assert ds.files[0].dropped["no full horizon ahead (end of file)"] == H
    assert ds.files[0].dropped["input not finite (warm-up)"] > 0
    assert np.isfinite(ds.x).all() and ds.x.dtype == np.float32
    # the inputs are the live ones: input_matrix over the live feature table, same rows
    kind, items = open_source(path)
    table = build_feature_table(items, symbol="EURUSD", timeframe="1m", kind=kind)
    np.testing.assert_array_equal(ds.x, input_matrix(table.columns, table.values, ds.inputs)[index])
    assert ds.inputs == available_inputs(table.columns)
    assert "spread_rel" not in ds.inputs  # no microstructure from bars


def test_rows_whose_horizon_or_window_spans_a_gap_are_dropped(tmp_path):
    closes = handmade_closes()
    times = START_MS + 60_000 * np.arange(len(closes))
    times[250:] += 2 * 86_400_000  # a weekend after bar 249
    path = write_bars(tmp_path / "eurusd_m1_gap.csv", closes, times)
    window = 4
    ds = build_dataset([path], timeframe="1m", horizon=H, dead_band=DEAD_BAND, window=window, min_rows=50)
    index = np.searchsorted(times, ds.bar_time_ms)
    assert not np.isin(np.arange(250 - H, 250), index).any()  # label would look across the weekend
    assert not np.isin(np.arange(250, 250 + window - 1), index).any()  # window would reach before it
    assert {249 - H, 250 + window - 1} <= set(index.tolist())  # the neighbours are kept
    dropped = ds.files[0].dropped
    assert dropped["horizon spans a data gap"] == H
    assert dropped["window spans a data gap"] == window - 1
    assert ((ds.label_end_ms - ds.bar_time_ms) <= 3 * H * 60_000).all()
    # windows end at their row, hold consecutive rows of the same file, all finite
    w = ds.windows()
    assert w.shape == (len(ds), window, len(ds.inputs))
    np.testing.assert_array_equal(w[:, -1], ds.x)
    assert np.isfinite(w).all()
    np.testing.assert_array_equal(ds.features(None, 2), w[:, -2:])


def test_same_file_same_hash_and_a_changed_price_changes_it(tmp_path):
    closes = handmade_closes()
    path = write_bars(tmp_path / "eurusd_m1_a.csv", closes)
    kwargs = dict(timeframe="1m", horizon=H, dead_band=DEAD_BAND, window=1, min_rows=50)
    first, again = build_dataset([path], **kwargs), build_dataset([path], **kwargs)
    assert first.data_hash == again.data_hash
    assert first.data_files == again.data_files == {"eurusd_m1_a.csv": first.files[0].sha256}
    changed = closes.copy()
    changed[200] += 3e-5
    write_bars(path, changed)
    other = build_dataset([path], **kwargs)
    assert other.data_hash != first.data_hash
    assert other.data_files != first.data_files


def test_tick_and_bar_files_share_only_their_common_inputs(tmp_path):
    [eurusd] = [p for p in sample_paths() if p.name.startswith("eurusd")]
    ticks = head_of(eurusd, 15_000, tmp_path / "eurusd_ticks_head.csv")
    bars = write_bars(tmp_path / "nzdusd_m1_handmade.csv", handmade_closes())
    ds = build_dataset([ticks, bars], timeframe="1m", horizon=H, dead_band=DEAD_BAND, window=1, min_rows=50)
    assert set(ds.symbol.tolist()) == {"EURUSD", "NZDUSD"}
    assert [f.kind for f in ds.files] == ["ticks", "bars"]
    assert "spread_rel" not in ds.inputs and "rsi" in ds.inputs
    assert (np.diff(ds.bar_time_ms) >= 0).all()  # one time-sorted set


def test_the_sample_dataset(sample_dataset):
    ds = sample_dataset
    assert len(ds) > 7000
    assert set(ds.symbol.tolist()) == {"EURUSD", "NZDUSD"}
    assert "spread_rel" in ds.inputs and "tick_imbalance" in ds.inputs  # ticks: microstructure too
    assert (np.diff(ds.bar_time_ms) >= 0).all()
    assert np.isfinite(ds.x).all() and np.isfinite(ds.windows()).all()
    assert ds.y.tolist() == direction(ds.forward_return, ds.dead_band).tolist()
    counts = ds.class_counts()
    assert min(counts.values()) > 0.15 * len(ds)  # with 0.35 bps, every class is well populated
    assert len(ds.data_hash) == 64 and set(ds.data_files) == {p.name for p in sample_paths()}


def test_errors_are_clear(tmp_path):
    kwargs = dict(timeframe="1m", horizon=H, dead_band=DEAD_BAND)
    with pytest.raises(DatasetError, match="no data files"):
        build_dataset([], **kwargs)
    with pytest.raises(DatasetError, match="no such data file"):
        build_dataset([tmp_path / "eurusd_ticks_nope.csv"], **kwargs)
    corrupt = tmp_path / "eurusd_ticks_corrupt.csv.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 this is not gzip")
    with pytest.raises(DatasetError, match="eurusd_ticks_corrupt.csv.gz: cannot read it"):
        build_dataset([corrupt], **kwargs)
    garbage = tmp_path / "eurusd_ticks_garbage.csv"
    garbage.write_text("hello,world\n1,2\n")
    with pytest.raises(DatasetError, match="unknown tick file layout"):
        build_dataset([garbage], **kwargs)
    short = write_bars(tmp_path / "eurusd_m1_short.csv", handmade_closes(120))
    with pytest.raises(DatasetError, match=r"too little data: \d+ labelled 1m rows, at least 200 are needed"):
        build_dataset([short], **kwargs)
    with pytest.raises(DatasetError, match="holds 1m bars, but 1h bars were asked for"):
        build_dataset([short], timeframe="1h", horizon=H, dead_band=DEAD_BAND)
    assert issubclass(DatasetError, ValueError)
