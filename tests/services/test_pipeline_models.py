"""run_pipeline with a model registry: ticks -> bars -> features -> three models -> ensemble."""

from __future__ import annotations

import gzip
import itertools
from collections import Counter

import pytest

from tradepipe.bus import open_bus
from tradepipe.config import Settings
from tradepipe.events import PREDICTIONS, SIGNALS, SYSTEM
from tradepipe.events.types import BarClosed, CircuitBreakerStateChanged, PredictionGenerated, TradingSignalGenerated
from tradepipe.models.registry import ModelLoadError, ModelRegistry
from tradepipe.pipeline import RunRequest, model_services, run_pipeline
from tradepipe.runtime.store import EventStore
from tradepipe.sources import sample_paths


def test_model_services_builds_the_enabled_kinds_and_the_ensemble(trained):
    settings = Settings(models={"kinds": ["lstm", "xgboost"]})
    services = model_services(settings, trained.registry.root)
    assert [(s.name, s.port) for s in services] == [
        ("ml-lstm", 8014), ("ml-xgboost", 8013), ("ensemble-coordinator", 8027)]
    assert services[-1].producers == ("ml-lstm", "ml-xgboost")
    assert services[-1].dead_band == services[0].card.dead_band
    assert [s.card.name for s in services[:2]] == ["LSTM-v1", "XGBoost-v1"]
    with pytest.raises(ModelLoadError, match="no such model card"):
        model_services(Settings(models={"version": "7"}), trained.registry)


@pytest.fixture(scope="module")
def sample_run(trained):
    bus = open_bus("memory://")
    summary = run_pipeline(RunRequest(paths=sample_paths(), settings=Settings()), bus, registry=trained.registry)
    yield bus, summary
    bus.close()


def test_the_sample_run_predicts_every_1m_bar_with_three_models_and_signals_each(sample_run):
    bus, summary = sample_run
    store = EventStore(bus)
    bars_1m = sum(1 for s in store.replay("market-data-events")
                  if type(s.event) is BarClosed and s.event.timeframe == "1m")
    # every 1m bar closed by a tick has all three feature groups at once: it is joined
    assert summary["predictions"] == 3 * bars_1m and summary["signals"] == bars_1m > 8000
    assert summary["dead_letters"] == 0 and summary["breaker_transitions"] == 0 and summary["model_failures"] == 0
    assert summary["models"] == {"xgboost": "XGBoost-v1", "lightgbm": "LightGBM-v1", "lstm": "LSTM-v1"}
    # the warm-up (EMA 50, MACD, ...) of each symbol answers by the trend rule
    assert 0 < summary["fallback_predictions"] < 3 * 2 * 60
    assert summary["events_written"] == sum(sum(bus.end_offsets(topic).values()) for topic in bus.topics())
    predictions = [s.event for s in store.replay(PREDICTIONS)]
    signals = [s.event for s in store.replay(SIGNALS)]
    assert all(type(p) is PredictionGenerated for p in predictions) and len(predictions) == summary["predictions"]
    assert all(type(s) is TradingSignalGenerated and not s.missing_models and len(s.contributors) == 3
               for s in signals)
    assert Counter(p.symbol for p in predictions) == Counter({s: 3 * n for s, n in
                                                              Counter(s.symbol for s in signals).items()})
    assert sum(p.fallback for p in predictions) == summary["fallback_predictions"]
    assert not [s for s in store.replay(SYSTEM) if type(s.event) is CircuitBreakerStateChanged]


def test_without_a_registry_or_with_an_empty_one_the_run_stops_at_the_features(tmp_path):
    tick_file = tmp_path / "eurusd_ticks.csv.gz"
    with gzip.open(sample_paths()[0], "rt") as source, gzip.open(tick_file, "wt") as target:
        target.writelines(itertools.islice(source, 5001))
    for registry in (None, ModelRegistry(tmp_path / "empty"), str(tmp_path / "empty")):
        bus = open_bus("memory://")
        summary = run_pipeline(RunRequest(paths=[tick_file], settings=Settings()), bus, registry=registry)
        bus.close()
        assert summary["predictions"] == summary["signals"] == summary["fallback_predictions"] == 0
        assert summary["models"] == {} and summary["features_events"] == 3 * summary["bars"]
