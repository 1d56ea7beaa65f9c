"""R6.1 / R6.4 training: purged walk-forward folds, reproducibility, no leakage, the report, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from tradepipe.cli import app
from tradepipe.models.evaluation import EvaluationError, validation_split, walk_forward
from tradepipe.models.registry import ModelRegistry
from tradepipe.models.training import TrainError, data_warnings, train
from tradepipe.sources import sample_paths

from .conftest import FOLDS, head_of, small_request

MINUTE = 60_000


# --- folds -------------------------------------------------------------------------------------

def test_walk_forward_purges_by_time_and_by_label_end():
    n, h = 1000, 5
    bar = np.arange(n, dtype=np.int64) * MINUTE
    end = bar + h * MINUTE
    end[590] = bar[590] + 120 * MINUTE  # a label that looks across a gap, far ahead
    folds = walk_forward(bar, end, n_folds=4, purge_ms=h * MINUTE)
    assert len(folds) == 4
    for k, fold in enumerate(folds):
        start = bar[fold.test].min()
        assert bar[fold.train].max() <= start - h * MINUTE  # purge >= horizon
        assert end[fold.train].max() < start  # no training label reaches into the test block
        assert start - bar[fold.train].max() >= h * MINUTE
        if k:
            assert fold.test.min() > folds[k - 1].test.max()  # blocks in time order, disjoint
            assert len(fold.train) > len(folds[k - 1].train)  # expanding window
    # fold 3 tests from bar 600 on: row 590 is well before it (more than the purge) but its
    # label looks across a gap into the test block, so it is not trained on; its neighbours are
    assert folds[2].test.min() == 600
    assert 590 not in folds[2].train and {589, 591, 594} <= set(folds[2].train)
    assert 595 not in folds[2].train  # its label ends at bar 600, the first test bar
    split = validation_split(bar, end, folds[3].train, purge_ms=h * MINUTE)
    assert end[split.train].max() < bar[split.test].min()
    assert bar[split.test].min() - bar[split.train].max() >= h * MINUTE
    assert abs(len(split.test) - 0.15 * len(folds[3].train)) <= 1
    with pytest.raises(EvaluationError, match="training rows"):
        walk_forward(bar[:60], end[:60], n_folds=4, purge_ms=h * MINUTE)


def test_the_trained_folds_have_a_purge_gap_of_at_least_the_horizon(trained):
    ds = trained.dataset
    purge = ds.horizon * MINUTE
    assert len(trained.folds) == FOLDS
    for fold in trained.folds:
        first_test = ds.bar_time_ms[fold.test].min()
        assert ds.bar_time_ms[fold.train].max() <= first_test - purge
        assert ds.label_end_ms[fold.train].max() < first_test  # no train label window overlaps a test row
        split = validation_split(ds.bar_time_ms, ds.label_end_ms, fold.train, purge_ms=purge)
        assert ds.label_end_ms[split.train].max() < ds.bar_time_ms[split.test].min()
    card = trained.models["xgboost"].card
    assert card.metrics["purge_ms"] >= ds.horizon * MINUTE
    assert [f["train_rows"] + f["validation_rows"] < len(ds) for f in card.metrics["folds"]] == [True] * FOLDS


# --- reproducibility (R6.4) ----------------------------------------------------------------

def _native_and_onnx(registry: ModelRegistry, card) -> dict[str, bytes]:
    directory = registry.entry_dir(card.kind, card.version)
    return {name: (directory / name).read_bytes() for name in card.files}


def test_same_data_and_seed_give_the_same_models_and_metrics(tmp_path, sample_dataset, trained):
    again = train(small_request(tmp_path), dataset=sample_dataset)
    for kind, first in trained.models.items():
        second = again.models[kind]
        assert second.card.data_hash == first.card.data_hash
        assert _native_and_onnx(ModelRegistry(again.request.registry), second.card) == \
            _native_and_onnx(ModelRegistry(trained.request.registry), first.card), kind
        assert second.card.metrics == first.card.metrics, kind
        assert second.card.accuracy == first.card.accuracy
        np.testing.assert_array_equal(second.proba, first.proba)
    other = train(small_request(tmp_path / "seed", seed=8, kinds=("xgboost",)), dataset=sample_dataset)
    native = "model.ubj"
    assert _native_and_onnx(ModelRegistry(other.request.registry), other.models["xgboost"].card)[native] != \
        _native_and_onnx(ModelRegistry(trained.request.registry), trained.models["xgboost"].card)[native]


# --- honesty -------------------------------------------------------------------------------

def test_shuffled_labels_score_at_the_baseline(tmp_path, sample_dataset, trained):
    """No leakage: models that learn from permuted labels cannot beat the baselines; the same
    models on the true labels do (on this data)."""
    shuffled = train(small_request(tmp_path, shuffle_labels=True), dataset=sample_dataset)
    majority = shuffled.baselines["overall"]["majority"]["accuracy"]
    for kind, model in shuffled.models.items():
        o = model.overall
        assert abs(o["balanced_accuracy"] - 1 / 3) < 0.03, (kind, o["balanced_accuracy"])
        assert o["accuracy"] <= majority + 0.02, (kind, o["accuracy"], majority)
        assert model.card.params["shuffle_labels"] is True
        real = trained.models[kind].overall
        assert real["balanced_accuracy"] > o["balanced_accuracy"] + 0.03, kind
        assert real["accuracy"] > majority, kind


def test_warnings_for_rare_classes_and_missing_spreads(tmp_path, trained):
    assert trained.warnings == []  # ticks, 0.35 bps over 5 minutes: every class above 5%
    from .test_dataset import DEAD_BAND, H, handmade_closes, write_bars
    from tradepipe.models.dataset import build_dataset

    bars = write_bars(tmp_path / "eurusd_m1_handmade.csv", handmade_closes())
    ds = build_dataset([bars], timeframe="1m", horizon=H, dead_band=DEAD_BAND, window=1, min_rows=50)
    notes = data_warnings(ds, small_request(tmp_path, shuffle_labels=True))
    assert any(n.startswith("SELL is only") and "lower --dead-band-bps" in n for n in notes)
    assert any("no spread input" in n for n in notes) and any("shuffled labels" in n for n in notes)


def test_the_report_files(trained):
    payload = json.loads(trained.report_json.read_text())
    assert trained.report_json.parent.name == trained.run_id
    assert payload["dataset"]["rows"] == len(trained.dataset)
    assert set(payload["dataset"]["class_counts"]) == {"SELL", "HOLD", "BUY"}
    assert sum(payload["dataset"]["class_counts"].values()) == len(trained.dataset)
    assert set(payload["models"]) == {"xgboost", "lightgbm", "lstm"}
    for kind, m in payload["models"].items():
        assert m["name"] == trained.models[kind].card.name
        assert len(m["folds"]) == FOLDS
        for key in ("accuracy", "balanced_accuracy", "precision", "log_loss", "roc_auc", "confusion", "equity"):
            assert key in m["overall"], key
        assert m["verdict_text"]
    assert {"majority", "previous_direction"} <= set(payload["baselines"]["overall"])
    assert len(payload["baselines"]["folds"]) == FOLDS
    assert payload["evaluation"]["purge_ms"] == 5 * MINUTE
    page = trained.report_html.read_text()
    assert page.count("data:image/png;base64,") == 3 * 3  # equity, confusion, calibration per model
    assert "previous direction" in page and "LSTM-v1" in page and "<script" not in page


def test_bad_requests(tmp_path, sample_dataset):
    with pytest.raises(TrainError, match="unknown model kind"):
        train(small_request(tmp_path, kinds=("xgboost", "catboost")), dataset=sample_dataset)
    with pytest.raises(TrainError, match="unknown xgboost parameter"):
        train(small_request(tmp_path, kinds=("xgboost",), params={"xgboost": {"rounds": 3}}), dataset=sample_dataset)
    with pytest.raises(TrainError, match="dataset was built for"):
        train(small_request(tmp_path, horizon=3), dataset=sample_dataset)


# --- CLI -----------------------------------------------------------------------------------

cli = CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TRADEPIPE_"):
            monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture
def small_files(workdir):
    """About 18 hours of each sample symbol (25,000 ticks)."""
    return [head_of(p, 25_000, workdir / p.name.replace(".csv.gz", "_head.csv")) for p in sample_paths()]


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_train_writes_the_registry_and_the_report(workdir, small_files):
    a, b = small_files
    result = invoke("train", "--data", a, b, "--registry", workdir / "reg", "--report", workdir / "rep",
                    "--models", "xgboost,lightgbm", "--folds", "2")
    assert result.exit_code == 0, result.output
    for text in ("XGBoost-v1", "LightGBM-v1", "majority", "prev.dir.", "fold 2", "logloss", "report:"):
        assert text in result.output, text
    registry = ModelRegistry(workdir / "reg")
    assert registry.versions("xgboost") == [1] and registry.versions("lightgbm") == [1]
    assert registry.versions("lstm") == []
    card = registry.load("XGBoost-v1").card
    assert card.symbols == ["EURUSD", "NZDUSD"] and card.horizon == 5 and card.dead_band == pytest.approx(0.35e-4)
    [run] = list((workdir / "rep").iterdir())
    assert (run / "report.json").is_file() and (run / "report.html").is_file()
    assert json.loads((run / "report.json").read_text())["request"]["n_folds"] == 2


def test_cli_train_bad_input_exits_2_with_a_message(workdir, small_files):
    result = invoke("train", "--data", small_files[0], "--models", "xgboost,catboost")
    assert result.exit_code == 2
    assert "unknown model kind" in result.output and "catboost" in result.output
    result = invoke("train", "--data", workdir / "eurusd_ticks_missing.csv")
    assert result.exit_code == 2 and "no such data file" in result.output
    result = invoke("train")
    assert result.exit_code == 2 and "--data" in result.output
    tiny = head_of(sample_paths()[0], 2_000, workdir / "eurusd_ticks_tiny.csv")
    result = invoke("train", "--data", tiny, "--registry", workdir / "reg")
    assert result.exit_code == 2 and "too little data" in result.output and "at least 200" in result.output
    result = invoke("train", "--data", small_files[0], "--timeframe", "2m")
    assert result.exit_code == 2 and "timeframe" in result.output
    assert not (workdir / "reg").exists()


def test_rows_do_not_change_when_later_data_is_appended(tmp_path):
    """No look-ahead in the inputs: a row's inputs are the same whether the file ends soon
    after it or goes on (a shuffled-label test cannot show this: a leaking input is useless
    once the labels are shuffled)."""
    from tradepipe.models.dataset import build_dataset

    [eurusd] = [p for p in sample_paths() if p.name.startswith("eurusd")]
    short = build_dataset([head_of(eurusd, 40_000, tmp_path / "eurusd_ticks_short.csv")],
                          timeframe="1m", horizon=5, dead_band=0.35e-4, window=8, min_rows=50)
    long = build_dataset([head_of(eurusd, 80_000, tmp_path / "eurusd_ticks_long.csv")],
                         timeframe="1m", horizon=5, dead_band=0.35e-4, window=8, min_rows=50)
    shared, in_short, in_long = np.intersect1d(short.bar_time_ms, long.bar_time_ms, return_indices=True)
    assert len(shared) == len(short) > 300  # every labelled row of the short file is in the long one
    np.testing.assert_array_equal(short.x[in_short], long.x[in_long])
    np.testing.assert_array_equal(short.windows(in_short), long.windows(in_long))
    np.testing.assert_array_equal(short.y[in_short], long.y[in_long])


def test_a_planted_leak_is_caught_by_the_evaluation(tmp_path, sample_dataset):
    """The other side of the leakage tests: an input that holds the future return lifts the
    out-of-sample scores far above anything the honest inputs reach, so the evaluation would
    show a leak if the feature code had one."""
    import msgspec

    leak = sample_dataset.inputs.index("ret_1")
    x = sample_dataset.x.copy()
    x[:, leak] = sample_dataset.forward_return  # ret_1 replaced by the return the label is made from
    leaky = msgspec.structs.replace(sample_dataset, x=x)
    result = train(small_request(tmp_path, kinds=("xgboost",)), dataset=leaky)
    assert result.models["xgboost"].overall["accuracy"] > 0.9
