"""Shared by the distributed tests: tiny real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradepipe.models.registry import ModelRegistry


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Path:
    """Tiny real models trained on the first EURUSD ticks of the sample (as tests/services)."""
    from services.conftest import TRAIN_TICKS, eurusd_ticks, train

    from tradepipe.features.history import build_feature_table
    from tradepipe.models.inputs import available_inputs

    root = tmp_path_factory.mktemp("registry")
    table = build_feature_table(eurusd_ticks(TRAIN_TICKS), symbol="EURUSD")
    inputs = available_inputs(table.columns)
    for kind in ("xgboost", "lightgbm", "lstm"):
        train(table, kind, inputs, ModelRegistry(root))
    return root
