"""Model inference (issue 4): single-row latency per model through its service handler, and the
whole features -> signal step (three models + ensemble) in the in-process kernel.

Inputs are real: the 1m FeaturesCalculated events of the first ``--ticks`` EURUSD ticks of
../shared/data, produced by the live feature stage beforehand. Models come from ``--registry``
(default: small models trained on the shipped sample into a temporary registry).

Measured per joined bar, after ``--warmup`` bars (LSTM window full, caches warm):
1. ONNX Runtime vs the native API, one row, same model (XGBoost inplace_predict, LightGBM
   predict, PyTorch LSTM), to show why the services run ONNX.
2. Each model service's ``handle`` of the feature event that completes a bar's join: join,
   input vector, breaker, inference (with each hang guard: worker thread, watchdog), event.
3. The features -> signal step: that completing feature event fed into a kernel holding the
   three model services and the ensemble, until its TradingSignalGenerated is out.

    python bench/inference.py [--ticks 150000] [--registry DIR] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common import SHARED_DATA, machine_note, report, small_registry  # bench/ is on sys.path
from tradepipe.config import Settings
from tradepipe.events import FeaturesCalculated, TradingSignalGenerated
from tradepipe.models.registry import ModelRegistry
from tradepipe.pipeline import MODEL_SERVICES, feature_services, model_services
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.files import read_ticks


def feature_events(ticks: int, timeframe: str) -> list[list[FeaturesCalculated]]:
    """Each bar's FeaturesCalculated events, in the order the kernel publishes them."""
    bars: dict = {}

    def collect(event) -> None:
        if type(event) is FeaturesCalculated and event.timeframe == timeframe:
            bars.setdefault((event.symbol, event.bar_time), []).append(event)

    kernel = InProcessPipeline(feature_services([timeframe]), on_event=collect)
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    for tick in itertools.islice(read_ticks(SHARED_DATA / "eurusd_ticks_2014-05.csv.gz"), ticks):
        kernel.feed_all(bridge.handle_tick(tick, ctx))
    return [events for events in bars.values() if len(events) == 3]


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    us = np.array(samples_ns) / 1e3
    return float(np.median(us)), float(np.percentile(us, 99))


def timed(fn, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return percentiles(samples)


def native_vs_onnx(registry: ModelRegistry, rows: dict[str, np.ndarray], n: int) -> list[tuple[str, tuple, tuple]]:
    import lightgbm as lgb
    import torch
    import xgboost as xgb

    from tradepipe.models.learners import _lstm_module

    out = []
    for kind, x in rows.items():
        model = registry.load(kind)
        directory = model.path
        if kind == "xgboost":
            booster = xgb.Booster(model_file=str(directory / "model.ubj"))
            booster.set_param({"nthread": 1})
            native = lambda b=booster, r=x[None, :]: b.inplace_predict(r)  # noqa: E731
        elif kind == "lightgbm":
            booster = lgb.Booster(model_file=str(directory / "model.txt"))
            native = lambda b=booster, r=x[None, :]: b.predict(r, num_threads=1)  # noqa: E731
        else:
            state = torch.load(directory / "model.pt")
            module = _lstm_module(x.shape[-1], state["head.weight"].shape[1], state["mean"].numpy(), state["std"].numpy())
            module.load_state_dict(state)
            module.eval()
            torch.set_num_threads(1)
            tensor = torch.from_numpy(x[None])

            def native(m=module, t=tensor):
                with torch.inference_mode():
                    return m(t)
        out.append((model.card.name, timed(native, n), timed(lambda m=model, r=x: m.predict_proba(r), n)))
    return out


def service_latency(registry: ModelRegistry, settings: Settings, bars, warmup: int, guard: str) -> dict[str, tuple]:
    result = {}
    for kind in settings.models.kinds:
        service = MODEL_SERVICES[kind](registry.load(kind), settings.models, guard=guard)
        ctx = Context(service.name)
        samples = []
        for i, events in enumerate(bars):
            for event in events[:-1]:
                ctx.begin(event)
                service.handle(event, ctx)
            ctx.begin(events[-1])
            start = time.perf_counter_ns()
            emitted = service.handle(events[-1], ctx)
            elapsed = time.perf_counter_ns() - start
            if i >= warmup:
                samples.append(elapsed)
        assert emitted, f"{service.name} emitted nothing for a complete bar"
        result[f"{service.name} ({service.card.name})"] = (*percentiles(samples), service.fallbacks)
        if hasattr(service, "close"):
            service.close()
    return result


def signal_latency(registry: ModelRegistry, settings: Settings, bars, warmup: int, guard: str) -> tuple[float, float, int]:
    signals = []
    kernel = InProcessPipeline(model_services(settings, registry, guard=guard),
                               on_event=lambda e: signals.append(e) if type(e) is TradingSignalGenerated else None)
    samples = []
    for i, events in enumerate(bars):
        kernel.feed_all(events[:-1])
        before = len(signals)
        start = time.perf_counter_ns()
        kernel.feed(events[-1])
        elapsed = time.perf_counter_ns() - start
        assert len(signals) == before + 1, "the completing feature event did not yield one signal"
        if i >= warmup:
            samples.append(elapsed)
    for service in kernel.services:
        if hasattr(service, "close"):
            service.close()
    return (*percentiles(samples), len(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=150_000)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(args.registry) if args.registry else small_registry(Path(tmp))
        names = {kind: registry.load(kind).card.name for kind in settings.models.kinds}
        bars = feature_events(args.ticks, settings.models.timeframe)
        lstm = registry.load("lstm").card
        rng = np.random.default_rng(0)
        rows = {kind: rng.normal(size=(lstm.window, len(lstm.inputs)) if kind == "lstm"
                                 else len(registry.load(kind).card.inputs)).astype(np.float32)
                for kind in settings.models.kinds}
        raw = native_vs_onnx(registry, rows, 3000)
        isolated = service_latency(registry, settings, bars, args.warmup, guard="thread")
        inline = service_latency(registry, settings, bars, args.warmup, guard="watchdog")
        guarded = signal_latency(registry, settings, bars, args.warmup, guard="thread")
        direct = signal_latency(registry, settings, bars, args.warmup, guard="watchdog")

    lines = [
        "## Inference",
        "",
        f"`python bench/inference.py --ticks {args.ticks}{' --registry ' + str(args.registry) if args.registry else ''}`"
        f" — {datetime.now(timezone.utc):%Y-%m-%d}, {machine_note()}. Models: {', '.join(names.values())}"
        f" ({'registry ' + str(args.registry) if args.registry else 'small models trained on the shipped sample'});"
        f" inputs: the 1m feature events of the first {args.ticks:,} EURUSD ticks ({len(bars)} bars,"
        f" first {args.warmup} not timed). Latencies in µs, median / p99.",
        "",
        "One row, the same model through its native API and through ONNX Runtime (1 thread):",
        "",
        "| model | native | ONNX Runtime | native / ONNX (median) |",
        "|---|---:|---:|---:|",
    ]
    for name, (nm, np99), (om, op99) in raw:
        lines.append(f"| {name} | {nm:.1f} / {np99:.1f} | {om:.1f} / {op99:.1f} | {nm / om:.1f}× |")
    lines += [
        "",
        "Each model service's handler for the feature event that completes a bar (join, inputs, breaker, "
        "inference, PredictionGenerated), with each hang guard (`models.inference_guard`): *thread* runs "
        "inference on the service's worker thread, *watchdog* (default) runs it inline with ONNX Runtime's "
        "terminate flag armed by one watchdog thread:",
        "",
        "| service | thread guard | watchdog guard | fallbacks |",
        "|---|---:|---:|---:|",
    ]
    for (name, (gm, gp, fb)), (im, ip, _) in zip(isolated.items(), inline.values()):
        lines.append(f"| {name} | {gm:.1f} / {gp:.1f} | {im:.1f} / {ip:.1f} | {fb} |")
    lines += ["", "Features → signal: from the feature event that completes a bar's join (the bar's other two "
              "groups were fed before the clock starts, the indicator work is the feature stage's) through the "
              "three model services and the ensemble in the kernel, until its TradingSignalGenerated is out, "
              f"over {guarded[2]} bars (goal: p99 < 1 ms):", "",
              "| model calls | median | p99 | goal |", "|---|---:|---:|---|"]
    for label, (med, p99, _) in (("watchdog guard (default)", direct), ("thread guard", guarded)):
        lines.append(f"| {label} | {med:.0f} µs | {p99:.0f} µs | {'met' if p99 < 1000 else '**missed**'} |")
    lines.append("")
    report(lines, args.write)


if __name__ == "__main__":
    main()
