"""Shared fixtures of the model-stage tests: tiny REAL models trained on real features.

The features are those the live services publish for the first 60,000 EURUSD ticks of the
shipped sample (``build_feature_table``, the training path); the labels are the direction of
the 5-bar return of ``close`` with a 0.35 bp dead band; the learners are those of
:mod:`tradepipe.models.learners` with tiny settings, saved in a registry as training saves
them. Only failures are ever simulated (see :class:`FaultyModel`), never the models.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass

import msgspec
import numpy as np
import pytest

from tradepipe.events import FeaturesCalculated
from tradepipe.features.history import FeatureTable, build_feature_table
from tradepipe.models.inputs import available_inputs, input_matrix
from tradepipe.models.learners import LEARNERS, Fitted
from tradepipe.models.registry import LoadedModel, ModelRegistry, TrainingWindow
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context, Service
from tradepipe.services.data_bridge import DataBridge
from tradepipe.services.model_service import FEATURE_GROUP_OF
from tradepipe.sources import sample_paths
from tradepipe.sources.files import read_ticks

HORIZON = 5
DEAD_BAND = 0.35e-4
SEED = 7
TRAIN_TICKS = 60_000
TINY = {
    "xgboost": {"num_boost_round": 20, "early_stopping_rounds": 5},
    "lightgbm": {"num_boost_round": 20, "early_stopping_rounds": 5, "min_data_in_leaf": 20},
    "lstm": {"max_epochs": 2, "window": 4, "hidden": 8},
}


def eurusd_ticks(limit: int | None = None) -> list:
    path = next(p for p in sample_paths() if p.name.startswith("eurusd"))
    return list(itertools.islice(read_ticks(path), limit))


def labels(close: np.ndarray, horizon: int = HORIZON, dead_band: float = DEAD_BAND) -> np.ndarray:
    change = close[horizon:] / close[:-horizon] - 1.0
    return np.where(change > dead_band, 2, np.where(change < -dead_band, 0, 1))


def train(table: FeatureTable, kind: str, inputs: tuple[str, ...], registry: ModelRegistry) -> tuple[Fitted, object]:
    """Fit ``kind`` on ``inputs`` of ``table`` (80/20 split in time) and save it in ``registry``."""
    x = input_matrix(table.columns, table.values, inputs)[:-HORIZON]
    y = labels(table.column("close"))
    learner = LEARNERS[kind](**TINY[kind])
    window = learner.window
    if window > 1:
        rows = np.arange(window - 1, len(x))
        x = np.stack([x[i - window + 1:i + 1] for i in rows])
        y = y[rows]
    cut = int(len(x) * 0.8)
    fitted = learner.fit(x[:cut], y[:cut], x[cut:], y[cut:], seed=SEED)
    accuracy = float((fitted.predict_proba(x[cut:]).argmax(axis=1) == y[cut:]).mean())
    card = registry.save(
        {
            "kind": kind, "inputs": list(inputs), "window": window, "symbols": [table.symbol],
            "timeframe": table.timeframe, "horizon": HORIZON, "dead_band": DEAD_BAND,
            "training_window": TrainingWindow(table.bar_time[0], table.bar_time[-1], len(x)),
            "data_hash": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest(), "seed": SEED,
            "params": TINY[kind], "accuracy": accuracy,
        },
        {"model.onnx": fitted.onnx_bytes(len(inputs), window), f"model.{fitted.native_suffix}": fitted.native_bytes()},
    )
    return fitted, card


@dataclass(frozen=True)
class Trained:
    registry: ModelRegistry
    fitted: dict  # kind -> Fitted
    inputs: tuple[str, ...]
    bar_registry: ModelRegistry  # one xgboost model without microstructure inputs (bar files)
    bar_inputs: tuple[str, ...]


@pytest.fixture(scope="session")
def training_table() -> FeatureTable:
    return build_feature_table(eurusd_ticks(TRAIN_TICKS), symbol="EURUSD")


@pytest.fixture(scope="session")
def trained(training_table, tmp_path_factory) -> Trained:
    started = time.perf_counter()
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    inputs = available_inputs(training_table.columns)
    fitted = {kind: train(training_table, kind, inputs, registry)[0] for kind in ("xgboost", "lightgbm", "lstm")}
    bar_registry = ModelRegistry(tmp_path_factory.mktemp("bar-registry"))
    bar_inputs = available_inputs([c for c in training_table.columns if FEATURE_GROUP_OF[c] != "market-microstructure"])
    train(training_table, "xgboost", bar_inputs, bar_registry)
    print(f"trained 4 tiny models in {time.perf_counter() - started:.1f}s")
    return Trained(registry, fitted, inputs, bar_registry, bar_inputs)


@pytest.fixture(scope="session")
def feature_events() -> list[FeaturesCalculated]:
    """The 1m FeaturesCalculated (all three groups) of the first 30,000 sample ticks, as the
    feature services publish them (real ids, causal chain, timestamps)."""
    return features_of(eurusd_ticks(30_000))


def features_of(ticks, timeframes=("1m",)) -> list[FeaturesCalculated]:
    from tradepipe.pipeline import feature_services

    published: list[FeaturesCalculated] = []
    kernel = InProcessPipeline(
        feature_services(timeframes),
        on_event=lambda e: published.append(e) if type(e) is FeaturesCalculated else None,
    )
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    for tick in ticks:
        kernel.feed_all(bridge.handle_tick(tick, ctx))
    return published


def run(services: list[Service], events) -> list:
    """Feed ``events`` through ``services`` in the in-process kernel; every output, in order."""
    outputs: list = []
    inputs = {id(e) for e in events}
    kernel = InProcessPipeline(services, on_event=lambda e: outputs.append(e) if id(e) not in inputs else None)
    kernel.feed_all(events)
    for service in services:
        if hasattr(service, "close"):
            service.close()  # ends the inference worker thread; the service stays usable
    return outputs


class FaultyModel:
    """A real LoadedModel with a switchable fault: ``mode`` None (the model answers), "raise",
    "nan" (non-finite probabilities) or "hang" (sleeps ``hang_s`` before answering)."""

    def __init__(self, model: LoadedModel, hang_s: float = 0.5) -> None:
        self.model, self.card, self.path = model, model.card, model.path
        self.mode: str | None = None
        self.hang_s = hang_s
        self.calls = 0

    def predict_proba(self, x: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError("injected model failure")
        if self.mode == "nan":
            return np.full(3, np.nan, dtype=np.float32)
        if self.mode == "hang":
            time.sleep(self.hang_s)
        return self.model.predict_proba(x, timeout_s)


def without_timing(event):
    """An event with its wall-time measurement blanked, for comparing runs."""
    from tradepipe.events.types import PredictionGenerated

    if type(event) is PredictionGenerated:
        return msgspec.structs.replace(event, model=msgspec.structs.replace(event.model, inference_time=""))
    return event


__all__ = ["FaultyModel", "features_of", "run", "without_timing"]
