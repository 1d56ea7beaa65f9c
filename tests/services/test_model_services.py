"""Model services (R6.2, R3.3): real models on real features; only failures are injected."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections import defaultdict
from datetime import timedelta

import msgspec
import numpy as np
import pytest

from tradepipe.config import ModelSettings
from tradepipe.events import SYSTEM
from tradepipe.events.types import CircuitBreakerStateChanged, PredictionGenerated
from tradepipe.features.join import FEATURE_GROUPS
from tradepipe.models.inputs import input_vector
from tradepipe.models.learners import CLASSES
from tradepipe.models.registry import ModelLoadError, ModelRegistry
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.store import Checkpoint
from tradepipe.services.lightgbm_model import LightGBMService
from tradepipe.services.lstm_model import LSTMService
from tradepipe.services.model_service import FEATURE_GROUP_OF, InputVector, trend_rule
from tradepipe.services.xgboost_model import XGBoostService

from .conftest import FaultyModel, run, without_timing

FE, TA, MM = FEATURE_GROUPS
SERVICES = {"xgboost": XGBoostService, "lightgbm": LightGBMService, "lstm": LSTMService}


def bars_of(events) -> list[list]:
    """The feature events grouped by bar, in stream order."""
    bars: dict = defaultdict(list)
    for e in events:
        bars[(e.symbol, e.bar_time)].append(e)
    return list(bars.values())


def predictions(outputs) -> list[PredictionGenerated]:
    return [e for e in outputs if type(e) is PredictionGenerated]


def transitions(outputs) -> list[tuple[str, str]]:
    return [(e.from_state, e.to_state) for e in outputs if type(e) is CircuitBreakerStateChanged]


class BarFeeder:
    """One kernel around one service, fed a bar (its three feature events) at a time."""

    def __init__(self, service, bars) -> None:
        self.service, self.bars, self.next = service, bars, 0
        self.outputs: list = []
        self.kernel = InProcessPipeline([service], on_event=self._collect)

    def _collect(self, event) -> None:
        if event.topic != "features-calculated":
            self.outputs.append(event)

    def feed(self, count: int = 1) -> list:
        start = len(self.outputs)
        for bar in self.bars[self.next:self.next + count]:
            self.kernel.feed_all(bar)
        self.next += count
        return self.outputs[start:]


# --- predictions -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["xgboost", "lightgbm", "lstm"])
def test_one_prediction_per_joined_bar_with_price_targets_and_causal_ids(trained, feature_events, kind):
    model = trained.registry.load(kind)
    outputs = run([SERVICES[kind](model)], feature_events)
    bars = bars_of(feature_events)
    assert all(sorted(e.group for e in bar) == sorted(FEATURE_GROUPS) for bar in bars)
    preds = predictions(outputs)
    assert len(preds) == len(bars) == len(outputs) > 1000  # no breaker events: nothing failed
    window: list = []
    for bar, p in zip(bars, preds):
        parts = {e.group: e for e in bar}
        fe, ta = parts[FE], parts[TA]
        assert {e.correlation_id for e in bar} == {p.correlation_id}  # the tick that closed the bar
        assert p.causation_id == bar[-1].event_id  # the group that completed the join
        assert (p.symbol, p.timeframe, p.bar_time, p.price) == ("EURUSD", "1m", fe.bar_time, fe.features["close"])
        assert p.metadata.producer == SERVICES[kind].name and p.prediction.time_horizon == "5m"
        atr, price, pred = ta.features["atr_14"], p.price, p.prediction
        if pred.direction == "BUY":
            assert (pred.target_price, pred.stop_loss) == (price + 2 * atr, price - atr)
        elif pred.direction == "SELL":
            assert (pred.target_price, pred.stop_loss) == (price - 2 * atr, price + atr)
        else:
            assert pred.target_price is None and pred.stop_loss is None
        # the model answers exactly when its input (window) is complete and finite
        joined = {k: v for e in bar for k, v in e.features.items()}
        window = (window + [input_vector(joined, model.card.inputs)])[-model.card.window:]
        usable = len(window) == model.card.window and np.isfinite(window).all()
        assert p.fallback is not usable
        if usable:
            assert p.model.name == model.card.name and p.model.accuracy == model.card.accuracy
            assert re.fullmatch(r"\d+us", p.model.inference_time)
            assert p.prediction.direction in CLASSES and 1 / 3 <= p.prediction.confidence <= 1
        else:  # warm-up: the trend rule, HOLD at 0 while EMA 50 is undefined
            assert p.model.name == "TrendRule"
            assert (pred.direction, pred.confidence) == trend_rule(joined)
    assert sum(not p.fallback for p in preds) > len(preds) - 60


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm", "lstm"])
def test_the_onnx_prediction_equals_the_models_own_predict_proba(trained, feature_events, kind):
    model = trained.registry.load(kind)
    fitted = trained.fitted[kind]
    preds = predictions(run([SERVICES[kind](model)], feature_events))
    vectors = [input_vector({k: v for e in bar for k, v in e.features.items()}, model.card.inputs)
               for bar in bars_of(feature_events)]
    w = model.card.window
    answered = [i for i, p in enumerate(preds) if not p.fallback]
    x = np.stack([np.stack(vectors[i - w + 1:i + 1]) if w > 1 else vectors[i] for i in answered])
    native = fitted.predict_proba(x)  # one batch: the native LSTM costs milliseconds per call
    for row, i in zip(range(len(x)), answered):
        onnx = model.predict_proba(x[row])
        np.testing.assert_allclose(onnx, native[row], atol=2e-5)
        best = int(np.argmax(onnx))
        p = preds[i]
        assert p.prediction.direction == CLASSES[best] and p.prediction.confidence == float(onnx[best])
    assert len(answered) > 1000


def test_the_cached_input_vector_equals_input_vector(trained, feature_events):
    inputs = trained.inputs
    cached = InputVector(inputs)
    for bar in bars_of(feature_events)[::7]:
        joined = {k: v for e in bar for k, v in e.features.items()}
        expected = input_vector(joined, inputs)
        got = cached(joined)
        np.testing.assert_array_equal(got, expected)  # NaN where NaN, bit for bit elsewhere
        assert not got.flags.writeable
        assert cached(dict(joined)) is got  # equal raw values: the memo
    joined["rsi"] = 12.5
    assert cached(joined)[inputs.index("rsi")] == np.float32(12.5 / 100 - 0.5)


def test_every_published_feature_is_mapped_to_its_group(feature_events):
    published = {(name, e.group) for e in feature_events for name in e.features}
    assert published == set(FEATURE_GROUP_OF.items())


# --- joins -----------------------------------------------------------------------------------

def test_a_model_without_microstructure_inputs_never_waits_for_that_group(trained, feature_events):
    service = XGBoostService(trained.bar_registry.load("xgboost"))
    assert service.join.groups == (FE, TA)
    without_micro = [e for e in feature_events if e.group != MM]
    preds = predictions(run([service], without_micro))
    bars = bars_of(without_micro)
    assert len(preds) == len(bars)
    assert [p.causation_id for p in preds] == [bar[-1].event_id for bar in bars]  # at once, no deadline
    assert sum(p.fallback for p in preds) < 60


def test_a_group_that_never_arrives_is_given_up_at_the_deadline_in_event_time(trained, feature_events):
    service = XGBoostService(trained.registry.load("xgboost"), ModelSettings(join_deadline_s=5))
    assert service.join.groups == FEATURE_GROUPS
    without_micro = [e for e in feature_events if e.group != MM]
    bars = bars_of(without_micro)
    preds = predictions(run([service], without_micro))
    # each bar is handed out (partial) by the first event 5 s or more after its first group:
    # the next bar's, a minute later; the last bar is still waiting
    assert len(preds) == len(bars) - 1 and service.join.in_flight == 1
    for bar, p in zip(bars, preds):
        assert p.bar_time == bar[0].bar_time and p.fallback
        assert p.causation_id == bar[-1].event_id and p.correlation_id == bar[0].correlation_id
    assert service.fallback_reasons == {"missing market-microstructure": len(preds)}
    assert service.breaker.failures == 0
    # live, on_timer gives the last one up once the clock has passed the deadline
    from tradepipe.runtime.service import Context

    ctx = Context(service.name)
    ctx.begin(None, key=b"timer")
    ctx.clock.advance(bars[-1][0].timestamp + timedelta(seconds=4))
    assert service.on_timer(ctx) == []
    ctx.clock.advance(bars[-1][0].timestamp + timedelta(seconds=5))
    [last] = service.on_timer(ctx)
    assert last.bar_time == bars[-1][0].bar_time and last.symbol == "EURUSD" and last.fallback
    assert last.correlation_id == bars[-1][0].correlation_id


def test_groups_of_a_bar_already_handed_out_are_ignored(trained, feature_events):
    service = XGBoostService(trained.registry.load("xgboost"))
    bars = bars_of(feature_events)[:80]
    events = [e for bar in bars for e in bar]
    replayed = events + bars[40]  # the three groups of an old bar, published again
    assert len(predictions(run([service], replayed))) == len(bars)
    assert service.join.in_flight == 0


# --- circuit breaker and fallbacks -------------------------------------------------------------

def test_breaker_opens_after_five_failures_probes_after_recovery_in_event_time_and_closes(trained, feature_events):
    settings = ModelSettings(breaker_recovery_s=300, fallback_fresh_s=120)
    model = FaultyModel(trained.registry.load("xgboost"))
    service = XGBoostService(model, settings)
    feeder = BarFeeder(service, bars_of(feature_events))
    warm = predictions(feeder.feed(70))
    assert not warm[-1].fallback and service.breaker.state == "CLOSED"
    last_good = warm[-1]

    model.mode = "raise"
    failing = feeder.feed(5)
    preds = predictions(failing)
    assert model.calls == 70 - sum(p.fallback for p in warm) + 5
    assert all(p.fallback for p in preds)
    # the last good prediction while it is fresh (bar 1 minute later), then the trend rule
    assert preds[0].model.name == last_good.model.name
    assert preds[0].prediction.direction == last_good.prediction.direction
    assert preds[0].prediction.confidence == last_good.prediction.confidence
    assert {p.model.name for p in preds[2:]} == {"TrendRule"}
    [opened] = [e for e in failing if type(e) is CircuitBreakerStateChanged]
    assert (opened.from_state, opened.to_state, opened.failures) == ("CLOSED", "OPEN", 5)
    assert opened.breaker == "ml-xgboost/XGBoost-v1" and opened.topic == SYSTEM
    assert "RuntimeError: injected model failure" in opened.reason
    assert opened.correlation_id == preds[-1].correlation_id and opened.symbol == "EURUSD"
    opened_at = opened.timestamp
    assert failing.index(opened) < failing.index(preds[-1])

    # OPEN: the model is not called until 300 s of event time have passed
    calls = model.calls
    while True:
        out = feeder.feed()
        if transitions(out):
            break
        assert predictions(out)[0].fallback and model.calls == calls
    # the probe fails: HALF_OPEN then OPEN again, in the same bar
    probe_time = predictions(out)[0].timestamp
    assert probe_time - opened_at >= timedelta(seconds=300) > probe_time - opened_at - timedelta(minutes=2)
    assert transitions(out) == [("OPEN", "HALF_OPEN"), ("HALF_OPEN", "OPEN")] and model.calls == calls + 1
    assert [e.failures for e in out if type(e) is CircuitBreakerStateChanged] == [5, 6]

    model.mode = None  # healed: the next probe closes the breaker
    while not transitions(out := feeder.feed()):
        assert predictions(out)[0].fallback
    assert transitions(out) == [("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")]
    assert predictions(out)[0].timestamp - probe_time >= timedelta(seconds=300)
    [p] = predictions(out)
    assert not p.fallback and p.model.name == "XGBoost-v1"
    assert service.breaker.state == "CLOSED" and service.breaker.failures == 0
    assert service.transitions == 5 and service.failures == 6
    assert not any(p.fallback for p in predictions(feeder.feed(5)))


def test_a_replay_opens_and_closes_the_breaker_at_the_same_events(trained, feature_events):
    def breaker_run():
        model = FaultyModel(trained.registry.load("xgboost"))
        feeder = BarFeeder(XGBoostService(model, ModelSettings(breaker_recovery_s=120)), bars_of(feature_events))
        feeder.feed(60)
        model.mode = "raise"
        feeder.feed(12)
        model.mode = None
        feeder.feed(10)
        return [without_timing(e) for e in feeder.outputs]

    first, second = breaker_run(), breaker_run()
    assert first == second and len([e for e in first if type(e) is CircuitBreakerStateChanged]) >= 4


def test_a_hung_model_times_out_as_a_failure_and_the_service_goes_on(trained, feature_events):
    model = FaultyModel(trained.registry.load("lightgbm"), hang_s=1.5)
    service = LightGBMService(model, ModelSettings(inference_timeout_s=0.05, inference_guard="thread"))
    feeder = BarFeeder(service, bars_of(feature_events))
    assert not predictions(feeder.feed(70))[-1].fallback
    worker = service._worker.thread
    model.mode = "hang"
    started = time.perf_counter()
    preds = predictions(feeder.feed(3))
    assert time.perf_counter() - started < 1.2  # 3 x 0.05 s, not 3 x 1.5 s
    assert all(p.fallback for p in preds) and service.timeouts == 3 and service.breaker.failures == 3
    assert service.breaker.state == "CLOSED"
    model.mode = None
    [p] = predictions(feeder.feed())
    assert not p.fallback and service.breaker.failures == 0
    assert service._worker.thread is not worker  # replaced after the timeout, reused otherwise
    hung = list(service._hung)
    assert len(hung) == 3
    for thread in hung:  # each hung call's thread ends when its call returns
        thread.join(5.0)
        assert not thread.is_alive()
    thread = service._worker.thread
    feeder.feed(3)
    assert service._worker.thread is thread
    service.close()
    thread.join(2.0)
    assert not thread.is_alive()


def test_with_the_watchdog_guard_a_slow_call_is_a_failure_and_no_thread_is_used(trained, feature_events):
    model = FaultyModel(trained.registry.load("xgboost"), hang_s=0.1)
    service = XGBoostService(model, ModelSettings(inference_timeout_s=0.02))
    assert service.guard == "watchdog"  # the default
    feeder = BarFeeder(service, bars_of(feature_events))
    assert not predictions(feeder.feed(70))[-1].fallback
    model.mode = "hang"
    preds = predictions(feeder.feed(2))
    assert all(p.fallback for p in preds) and service.timeouts == 2 and service._worker is None
    model.mode = None
    [p] = predictions(feeder.feed())
    assert not p.fallback and service.breaker.failures == 0


def test_the_watchdog_aborts_an_overrunning_onnx_runtime_run():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tradepipe.models.registry import Watchdog

    n, steps = 700, 80  # 80 x 0.7 GFLOP: far longer than the 0.02 s deadline below, on one thread
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", "x"], [f"y{i}"]) for i in range(steps)]
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info(f"y{steps - 1}", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.full((n, n), 1e-3, dtype=np.float32)
    watchdog = Watchdog(period_s=0.005)

    started = time.perf_counter()
    run = ort.RunOptions()
    with watchdog.watch(run, 5.0):  # a generous deadline: the run completes
        session.run(None, {"x": x}, run)
    full = time.perf_counter() - started
    assert not run.terminate  # the watchdog leaves a run within its deadline alone

    started = time.perf_counter()
    run = ort.RunOptions()
    with pytest.raises(Exception, match="(?i)terminat"), watchdog.watch(run, 0.02):
        session.run(None, {"x": x}, run)
    assert run.terminate and time.perf_counter() - started < full


def test_hung_calls_are_capped_so_threads_do_not_pile_up(trained, feature_events):
    model = FaultyModel(trained.registry.load("xgboost"), hang_s=2.0)
    service = XGBoostService(model, ModelSettings(inference_timeout_s=0.02, breaker_threshold=20,
                                                  inference_guard="thread"))
    feeder = BarFeeder(service, bars_of(feature_events))
    feeder.feed(60)
    threads_before, calls = threading.active_count(), model.calls
    model.mode = "hang"
    started = time.perf_counter()
    feeder.feed(8)
    assert time.perf_counter() - started < 1.5  # 4 x 0.02 s, then 4 at once; not 8 x 2 s
    assert service.failures == service.timeouts == 8
    assert model.calls == calls + 4  # the last 4 failed at once: 4 calls were still hung
    assert threading.active_count() <= threads_before + 4
    assert sum(t.is_alive() for t in service._hung) == 4


def test_non_finite_model_output_is_a_failure(trained, feature_events):
    model = FaultyModel(trained.registry.load("xgboost"))
    service = XGBoostService(model)
    feeder = BarFeeder(service, bars_of(feature_events))
    feeder.feed(60)
    model.mode = "nan"
    [p] = predictions(feeder.feed())
    assert p.fallback and service.failures == 1 and service.breaker.failures == 1


def test_nan_features_take_the_fallback_without_touching_the_breaker(trained, feature_events):
    model = FaultyModel(trained.registry.load("xgboost"))
    service = XGBoostService(model)
    bars = bars_of(feature_events)
    feeder = BarFeeder(service, bars)
    good = predictions(feeder.feed(70))[-1]
    assert not good.fallback
    bar = bars[70]
    broken = [msgspec.structs.replace(e, features={**e.features, "atr_14": None}) if e.group == TA else e for e in bar]
    feeder.bars = bars[:70] + [broken] + bars[71:]
    calls, warm_up = model.calls, service.fallback_reasons["non-finite inputs"]
    out = feeder.feed()
    [p] = predictions(out)
    assert p.fallback and model.calls == calls and not transitions(out)
    assert service.breaker.failures == 0 and service.breaker.state == "CLOSED"
    assert p.model.name == good.model.name and p.prediction.direction == good.prediction.direction
    assert p.prediction.target_price is None and p.prediction.stop_loss is None  # no ATR: no target
    assert service.fallback_reasons["non-finite inputs"] == warm_up + 1
    assert not predictions(feeder.feed())[0].fallback


def test_lstm_waits_for_a_full_window_and_nan_keeps_it_on_the_fallback_while_in_the_window(trained, feature_events):
    model = FaultyModel(trained.registry.load("lstm"))
    service = LSTMService(model)
    bars = bars_of(feature_events)
    feeder = BarFeeder(service, bars)
    assert not predictions(feeder.feed(70))[-1].fallback
    window = model.card.window
    bar = bars[70]
    feeder.bars = bars[:70] + [[msgspec.structs.replace(e, features={**e.features, "rsi": None})
                                if e.group == FE else e for e in bar]] + bars[71:]
    calls = model.calls
    preds = predictions(feeder.feed(window + 1))
    assert [p.fallback for p in preds] == [True] * window + [False]
    assert model.calls == calls + 1 and service.breaker.failures == 0


# --- bad model files ---------------------------------------------------------------------------

def copy_registry(trained, tmp_path) -> ModelRegistry:
    shutil.copytree(trained.registry.root, tmp_path / "registry")
    return ModelRegistry(tmp_path / "registry")


def test_a_missing_model_file_fails_at_load(trained, tmp_path):
    registry = copy_registry(trained, tmp_path)
    (registry.entry_dir("xgboost", 1) / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"xgboost/v1/model.onnx: missing"):
        registry.load("xgboost")
    with pytest.raises(ModelLoadError, match="no xgboost model"):
        ModelRegistry(tmp_path / "empty").load("xgboost")


def test_a_corrupt_model_file_fails_at_load(trained, tmp_path):
    registry = copy_registry(trained, tmp_path)
    path = registry.entry_dir("lightgbm", 1) / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"lightgbm/v1/model.onnx: corrupt"):
        registry.load("lightgbm")


def test_a_card_whose_inputs_do_not_match_the_graph_fails_at_load(trained, tmp_path):
    registry = copy_registry(trained, tmp_path)
    card_path = registry.entry_dir("lstm", 1) / "card.json"
    card = json.loads(card_path.read_text())
    card["inputs"] = card["inputs"][:-1]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"graph takes rows of shape \[4, 24\].*\[4, 23\]"):
        registry.load("lstm")
    card["inputs"] = ["rsi", "no_such_input"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="unknown model inputs"):
        registry.load("lstm")


def test_a_card_listing_the_inputs_in_another_order_fails_at_load(trained, tmp_path):
    registry = copy_registry(trained, tmp_path)
    card_path = registry.entry_dir("xgboost", 1) / "card.json"
    card = json.loads(card_path.read_text())
    card["inputs"][0], card["inputs"][1] = card["inputs"][1], card["inputs"][0]  # same length, swapped
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"xgboost/v1/model.onnx: the graph was trained on inputs"):
        registry.load("xgboost")


def test_a_model_of_another_kind_is_refused(trained):
    with pytest.raises(ModelLoadError, match="a xgboost model cannot run in the ml-lstm service"):
        LSTMService(trained.registry.load("xgboost"))


# --- state -------------------------------------------------------------------------------------

def test_lstm_snapshot_and_restore_mid_stream_gives_the_uninterrupted_outputs(trained, feature_events):
    model = trained.registry.load("lstm")
    events = feature_events[:2400]
    uninterrupted = [without_timing(e) for e in run([LSTMService(model)], events)]
    # stop right after the first group of a bar: its join is in flight at the checkpoint
    split = next(i for i in range(len(events) // 2, len(events)) if events[i].bar_time != events[i - 1].bar_time) + 1
    first = LSTMService(model)
    before = run([first], events[:split])
    state = first.snapshot()
    assert first.join.in_flight == 1 and len(state["joins"]) == 1
    assert len(state["windows"]["EURUSD"]) == model.card.window
    stored = msgspec.msgpack.decode(msgspec.msgpack.encode(Checkpoint(positions=[], state=state)), type=Checkpoint)
    second = LSTMService(model)
    second.restore(stored.state)
    after = run([second], events[split:])
    assert [without_timing(e) for e in before + after] == uninterrupted
    assert second.snapshot() == LSTMService.snapshot(_run_to_end(model, events))


def _run_to_end(model, events):
    service = LSTMService(model)
    run([service], events)
    return service


def test_breaker_state_and_last_good_predictions_survive_a_restore(trained, feature_events):
    model = FaultyModel(trained.registry.load("xgboost"))
    service = XGBoostService(model)
    feeder = BarFeeder(service, bars_of(feature_events))
    feeder.feed(60)
    model.mode = "raise"
    feeder.feed(6)
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(service.snapshot()))
    restored = XGBoostService(trained.registry.load("xgboost"))
    restored.restore(state)
    assert restored.breaker.snapshot() == service.breaker.snapshot() and restored.breaker.state == "OPEN"
    assert restored.last_good == service.last_good and restored.last_bar == service.last_bar
