"""R6.1 / R6.4 model registry: versions, names, cards, ONNX vs native, clear load errors."""

from __future__ import annotations

import json
import shutil

import msgspec
import numpy as np
import pytest

from tradepipe.models.learners import CLASSES
from tradepipe.models.registry import ModelCard, ModelLoadError, ModelRegistry


@pytest.fixture
def registry(trained, tmp_path) -> ModelRegistry:
    """A private copy of the session's trained registry (tests may break it)."""
    shutil.copytree(trained.request.registry, tmp_path / "registry")
    return ModelRegistry(tmp_path / "registry")


def _resave(registry: ModelRegistry, card: ModelCard) -> ModelCard:
    """The same model saved again: the registry numbers it."""
    directory = registry.entry_dir(card.kind, card.version)
    fields = {f: getattr(card, f) for f in card.__struct_fields__ if f not in ("name", "version", "created", "files")}
    return registry.save(fields, {name: (directory / name).read_bytes() for name in card.files})


def test_names_versions_and_latest(registry, trained):
    assert {c.name for c in registry.cards()} == {"XGBoost-v1", "LightGBM-v1", "LSTM-v1"}
    v2 = _resave(registry, registry.card("xgboost", 1))
    assert (v2.name, v2.version) == ("XGBoost-v2", 2)
    assert registry.versions("xgboost") == [1, 2]
    assert registry.load("XGBoost-v2").card.version == 2
    assert registry.load("xgboost").card.name == "XGBoost-v2"  # latest
    assert registry.load("xgboost", "latest").card.version == 2
    assert registry.load("xgboost", 1).card.name == "XGBoost-v1"
    assert registry.load("lstm").card.name == "LSTM-v1"
    with pytest.raises(ModelLoadError, match="XGBoost-v3|v3"):
        registry.load("XGBoost-v3")
    with pytest.raises(ModelLoadError, match="unknown model"):
        registry.load("catboost")


def test_the_card_describes_the_model(registry, trained):
    ds = trained.dataset
    for kind, result in trained.models.items():
        card = registry.card(kind, 1)
        assert card == result.card
        assert card.inputs == list(ds.inputs)
        assert card.window == (8 if kind == "lstm" else 1)  # SMALL_PARAMS' LSTM window
        assert card.symbols == ["EURUSD", "NZDUSD"] and card.timeframe == "1m" and card.horizon == 5
        assert card.data_hash == ds.data_hash and card.data_files == ds.data_files and card.seed == 7
        assert card.training_window.rows == result.final["fit_rows"] + result.final["validation_rows"] <= len(ds)
        assert card.training_window.start < card.training_window.end
        assert len(card.metrics["folds"]) == 3
        assert card.accuracy == card.metrics["overall"]["accuracy"] == result.overall["accuracy"]
        assert {"majority", "previous_direction"} <= set(card.metrics["baselines"]["overall"])
        for library in ("xgboost", "lightgbm", "torch", "onnxruntime", "numpy", "sklearn"):
            assert card.libraries[library][0].isdigit(), library
        assert set(card.files) == {"model.onnx", f"model.{ {'xgboost': 'ubj', 'lightgbm': 'txt', 'lstm': 'pt'}[kind]}"}
        assert result.final["onnx_max_abs_diff"] < 1e-4


def _native_predict(registry: ModelRegistry, card: ModelCard, x: np.ndarray) -> np.ndarray:
    """Probabilities from the registry's *native* file, loaded with the model's own library."""
    directory = registry.entry_dir(card.kind, card.version)
    if card.kind == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(directory / "model.ubj"))
        return booster.inplace_predict(x)
    if card.kind == "lightgbm":
        import lightgbm as lgb

        return lgb.Booster(model_file=str(directory / "model.txt")).predict(x)
    import torch

    from tradepipe.models.learners import _lstm_module

    state = torch.load(directory / "model.pt", weights_only=True)
    k = len(card.inputs)
    module = _lstm_module(k, card.params["hidden"], np.zeros(k), np.ones(k))
    module.load_state_dict(state)
    with torch.inference_mode():
        return module.eval()(torch.from_numpy(x)).numpy()


def test_onnx_output_equals_the_native_model_on_real_rows(registry, trained):
    ds = trained.dataset
    rows = np.linspace(0, len(ds) - 1, 40).astype(int)
    for kind in trained.models:
        loaded = registry.load(kind)
        x = ds.features(rows, loaded.card.window)
        native = _native_predict(registry, loaded.card, x)
        onnx = np.stack([loaded.predict_proba(row) for row in x])
        assert onnx.shape == (len(rows), len(CLASSES))
        np.testing.assert_allclose(onnx.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(onnx, native, atol=1e-4, rtol=0)


def test_a_corrupt_onnx_file_fails_at_load_naming_the_file(registry):
    path = registry.entry_dir("xgboost", 1) / "model.onnx"
    data = bytearray(path.read_bytes())
    data[100:110] = bytes(b ^ 0xFF for b in data[100:110])
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"xgboost/v1/model.onnx: corrupt"):
        registry.load("XGBoost-v1")
    # corrupt bytes whose hash the card agrees with: ONNX Runtime refuses them, at load
    card_path = registry.entry_dir("xgboost", 1) / "card.json"
    card = json.loads(card_path.read_text())
    import hashlib

    path.write_bytes(b"not an onnx graph at all")
    card["files"]["model.onnx"] = hashlib.sha256(b"not an onnx graph at all").hexdigest()
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"model.onnx: not a loadable ONNX model"):
        registry.load("xgboost")


def test_a_missing_model_file_fails_at_load(registry):
    (registry.entry_dir("lightgbm", 1) / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"lightgbm/v1/model.onnx: missing"):
        registry.load("LightGBM-v1")
    (registry.entry_dir("lstm", 1) / "card.json").unlink()
    with pytest.raises(ModelLoadError, match=r"lstm/v1/card.json: no such model card"):
        registry.load("lstm", 1)


def test_a_card_with_an_unknown_input_fails_at_load(registry):
    card_path = registry.entry_dir("xgboost", 1) / "card.json"
    card = json.loads(card_path.read_text())
    card["inputs"][0] = "moon_phase"
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"card.json: unknown model inputs \['moon_phase'\]"):
        registry.load("xgboost")
    card_path.write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt model card"):
        registry.load("xgboost")
    assert msgspec.json.decode((registry.entry_dir("lstm", 1) / "card.json").read_bytes(), type=ModelCard).window == 8
