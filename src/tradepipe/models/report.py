"""The training report (R6.1): ``<report>/<run-id>/report.json`` and ``report.html``.

The JSON holds everything the run measured (request, data summary with class balance, folds,
per-model fold and overall metrics, baselines, registry names); the HTML is self-contained
(plots as base64 PNGs, matplotlib's Agg backend): the metrics table, per model the equity of
the naive long/short-on-prediction rule against the baselines' equity, the confusion matrix
and the calibration curve, and a plain verdict on whether the model beats the baselines.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tradepipe.models.learners import CLASSES

if TYPE_CHECKING:
    from tradepipe.models.training import TrainResult


def _strip(value: Any) -> Any:
    """JSON-ready: no equity curves (plots only), numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("curve")}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def verdict(overall: dict, baselines: dict) -> dict:
    """Whether a model's out-of-sample numbers beat both baselines, with the margin and the
    accuracy's standard error (a margin inside 2 standard errors is not evidence)."""
    best_acc_name, best_acc = max(((n, b["accuracy"]) for n, b in baselines.items()), key=lambda t: t[1])
    best_bal_name, best_bal = max(((n, b["balanced_accuracy"]) for n, b in baselines.items()), key=lambda t: t[1])
    # consecutive rows' labels overlap (each spans the horizon), so they are not independent:
    # count rows spaced a horizon apart (the naive rule's rows), not every row
    n = max(len(overall.get("equity", {}).get("curve") or ()) or overall["rows"], 1)
    se = math.sqrt(max(best_acc * (1 - best_acc), 1e-12) / n)
    margin = overall["accuracy"] - best_acc
    prior_loss = baselines["majority"].get("log_loss")
    beats_acc = margin > 0
    beats_bal = overall["balanced_accuracy"] > best_bal
    beats_loss = prior_loss is not None and overall["log_loss"] is not None and overall["log_loss"] < prior_loss
    significant = margin > 2 * se
    return {
        "beats_accuracy": beats_acc, "beats_balanced_accuracy": beats_bal, "beats_prior_log_loss": beats_loss,
        "best_baseline_accuracy": {"name": best_acc_name, "value": best_acc},
        "best_baseline_balanced_accuracy": {"name": best_bal_name, "value": best_bal},
        "accuracy_margin": margin, "accuracy_standard_error": se, "significant": bool(beats_acc and significant),
        "beats_all": bool(beats_acc and beats_bal and beats_loss),
    }


def verdict_text(display: str, v: dict) -> str:
    acc, bal = v["best_baseline_accuracy"], v["best_baseline_balanced_accuracy"]
    pts = f"{v['accuracy_margin'] * 100:+.2f} points vs {acc['name'].replace('_', ' ')} ({acc['value']:.3f})"
    se = f"2 standard errors = {2 * v['accuracy_standard_error'] * 100:.2f} points"
    if v["beats_all"] and v["significant"]:
        return (f"{display} beats both baselines out of sample: accuracy {pts}, more than {se}; balanced "
                f"accuracy above {bal['value']:.3f}; log-loss below the class-share prior.")
    parts = []
    if not v["beats_accuracy"]:
        parts.append(f"its accuracy does not beat the best baseline ({pts})")
    elif not v["significant"]:
        parts.append(f"its accuracy margin ({pts}) is within {se}, i.e. not distinguishable from the baseline")
    if not v["beats_balanced_accuracy"]:
        parts.append(f"its balanced accuracy does not beat {bal['name'].replace('_', ' ')} ({bal['value']:.3f})")
    if not v["beats_prior_log_loss"]:
        parts.append("its log-loss is no better than predicting the training class shares")
    if not parts:
        return f"{display} beats both baselines out of sample ({pts})."
    return f"{display} does not clearly beat the baselines: " + "; ".join(parts) + "."


def equity_text(equity: dict) -> str:
    if not equity["trades"]:
        return "The naive rule made no trade (the model said HOLD on every non-overlapping test row)."
    text = (f"Naive rule: {equity['trades']:,} trades, hit rate {equity['hit_rate']:.1%}, "
            f"{equity['total_return'] * 1e4:+.1f} bps before costs")
    after = equity.get("total_return_after_spread")
    if after is not None:
        text += f", {after * 1e4:+.1f} bps after paying the spread"
        if after <= 0 < equity["total_return"]:
            text += " (the edge does not cover the spread)"
    text += "."
    coin = 2 * math.sqrt(0.25 / equity["trades"])
    if abs(equity["hit_rate"] - 0.5) <= coin:
        text += (f" On the rows it trades, the direction is right {equity['hit_rate']:.1%} of the time, within "
                 f"2 standard errors ({coin:.1%}) of a coin flip: whatever edge the classification metrics show "
                 "comes from telling quiet periods (HOLD) from moves, not from the direction of the move.")
    return text


def report_payload(result: TrainResult) -> dict:
    request, ds = result.request, result.dataset
    base = result.baselines["overall"]
    models = {}
    for kind, m in result.models.items():
        v = verdict(m.overall, {"majority": base["majority"], "previous_direction": base["previous_direction"]})
        models[kind] = {
            "name": m.card.name, "version": m.card.version,
            "registry_path": str(Path(request.registry) / kind / f"v{m.card.version}"),
            "params": m.card.params, "window": m.card.window,
            "overall": m.overall, "folds": m.folds, "final": m.final, "verdict": v,
            "verdict_text": verdict_text(m.card.name, v),
            "equity_text": equity_text(m.overall["equity"]),
        }
    folds = [{
        "fold": k + 1, "train_rows": int(len(f.train)), "test_rows": int(len(f.test)),
        "train_last_bar": ds.bar_times(np.array([f.train[-1]]))[0].isoformat(),
        "train_last_label_end_ms": int(ds.label_end_ms[f.train].max()),
        "test_start_ms": f.test_start_ms, "test_end_ms": f.test_end_ms,
        "test_first_bar": ds.bar_times(np.array([f.test[0]]))[0].isoformat(),
        "test_last_bar": ds.bar_times(np.array([f.test[-1]]))[0].isoformat(),
    } for k, f in enumerate(result.folds)]
    return _strip({
        "run_id": result.run_id,
        "created": datetime.now(timezone.utc).isoformat(),
        "wall_s": result.wall_s,
        "request": {
            "paths": [str(p) for p in request.paths], "symbol": request.symbol, "timeframe": request.timeframe,
            "horizon": request.horizon, "dead_band": request.dead_band, "dead_band_bps": request.dead_band * 1e4,
            "kinds": list(request.kinds), "registry": str(request.registry), "seed": request.seed,
            "n_folds": request.n_folds, "params": {k: dict(v) for k, v in request.params.items()},
            "shuffle_labels": request.shuffle_labels,
        },
        "dataset": ds.summary(),
        "evaluation": {
            "scheme": "walk-forward, expanding window; the time range is cut into n_folds+1 blocks, fold k "
                      "tests on block k+1 and trains on earlier rows whose bar is at least the purge before "
                      "the block and whose label ends before it; early stopping on the last 15% of each "
                      "training part (purged the same way); test blocks are never used for fitting or tuning",
            "purge_ms": request.horizon * _tf_ms(request.timeframe),
            "folds": folds,
            "equity_rule": "+1 on BUY, -1 on SELL, 0 on HOLD, held for the horizon, on non-overlapping test "
                           "rows per symbol; sum of mid-price returns before costs, and after paying the "
                           "entry bar's relative spread once per trade where the data has spreads (no "
                           "commission, no slippage)",
            "equity_rows": int(len(result.equity_rows)),
        },
        "warnings": result.warnings,
        "baselines": result.baselines,
        "models": models,
        "libraries": next(iter(result.models.values())).card.libraries if result.models else {},
    })


def _tf_ms(timeframe: str) -> int:
    from tradepipe.sources.files import timeframe_ms

    return timeframe_ms(timeframe)


# --- plots -----------------------------------------------------------------------------------

def _figure(width: float, height: float):
    """A figure outside pyplot (no global backend state; PNGs render through Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _equity_plot(result: TrainResult, kind: str) -> str:
    ds, m = result.dataset, result.models[kind]
    times = ds.bar_time_ms[result.equity_rows].astype("datetime64[ms]")
    base = result.baselines["overall"]
    fig, ax = _figure(8, 3.2)
    for label, curve, style in (
        (f"{m.card.name} (naive rule)", m.overall["equity"]["curve"], "-"),
        ("majority baseline", base["majority"]["equity"]["curve"], ":"),
        ("previous direction", base["previous_direction"]["equity"]["curve"], "--"),
    ):
        ax.plot(times, np.asarray(curve) * 1e4, style, label=label, linewidth=1.2)
    net = m.overall["equity"].get("curve_after_spread")
    if net is not None:
        ax.plot(times, np.asarray(net) * 1e4, "-", color="tab:red", alpha=0.6, linewidth=0.9,
                label=f"{m.card.name} after paying the spread")
    for fold in result.folds[1:]:
        ax.axvline(np.datetime64(fold.test_start_ms, "ms"), color="grey", linewidth=0.5, alpha=0.6)
    ax.set_ylabel("cumulative return (bps)")
    ax.set_title("Out-of-sample equity of the naive rule (fold starts in grey)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)


def _confusion_plot(confusion: list[list[int]], title: str) -> str:
    cm = np.asarray(confusion, dtype=np.float64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = _figure(3.8, 3.4)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(3), CLASSES)
    ax.set_yticks(range(3), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def _calibration_plot(y: np.ndarray, proba: np.ndarray, title: str) -> str:
    from sklearn.calibration import calibration_curve

    fig, ax = _figure(4.2, 3.4)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    top = proba.max(axis=1)
    series = [("top class right", (np.argmax(proba, axis=1) == y).astype(int), top)]
    series += [(f"{name} (one-vs-rest)", (y == c).astype(int), proba[:, c]) for c, name in enumerate(CLASSES)]
    for label, truth, p in series:
        if truth.min() == truth.max():
            continue
        frac, mean = calibration_curve(truth, p, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, marker="o", markersize=3, linewidth=1, label=label)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


# --- html ------------------------------------------------------------------------------------

def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _metric_row(name: str, m: dict, equity: dict | None) -> str:
    cells = [name, _f(m["accuracy"]), _f(m["balanced_accuracy"]), _f(m.get("log_loss")), _f(m.get("roc_auc"))]
    cells += [_f(m["precision"][c]) for c in CLASSES]
    if equity:
        after = equity.get("total_return_after_spread")
        cells += [_f(equity["total_return"] * 1e4, 1), _f(None if after is None else after * 1e4, 1),
                  _f(equity["hit_rate"]), str(equity["trades"])]
    else:
        cells += ["–"] * 4
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_HEAD = ("<tr><th>model</th><th>accuracy</th><th>balanced acc.</th><th>log-loss</th><th>ROC AUC</th>"
         + "".join(f"<th>precision {c}</th>" for c in CLASSES)
         + "<th>equity before costs (bps)</th><th>after spread (bps)</th><th>hit rate</th><th>trades</th></tr>")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.verdict { padding: 0.6em 1em; border-left: 4px solid #c60; background: #fff6ec; }
.verdict.ok { border-color: #080; background: #eefbee; }
.warn { padding: 0.6em 1em; border-left: 4px solid #c00; background: #fdeaea; }
img { margin: 0.3em; vertical-align: top; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def render_html(result: TrainResult, payload: dict) -> str:
    ds = result.dataset
    base = result.baselines["overall"]
    summary = payload["dataset"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tradepipe train {result.run_id}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>tradepipe train — {html.escape(result.run_id)}</h1>"]
    for note in result.warnings:
        parts.append(f"<p class='warn'><b>Note:</b> {html.escape(note)}</p>")
    shares = ", ".join(f"{k} {v:.1%}" for k, v in summary["class_share"].items())
    parts.append(
        "<h2>Data</h2><p>"
        f"{summary['rows']:,} labelled {html.escape(ds.timeframe)} rows of {', '.join(map(html.escape, summary['symbols']))}, "
        f"{html.escape(str(summary['first_bar']))} → {html.escape(str(summary['last_bar']))}; "
        f"label: direction of the mid return over {ds.horizon} bars, HOLD within ±{ds.dead_band * 1e4:g} bps; "
        f"class balance: {shares}. {len(ds.inputs)} scale-free inputs: <code>{html.escape(', '.join(ds.inputs))}</code>. "
        f"Data hash <code>{ds.data_hash[:16]}…</code>.</p>"
        "<table><tr><th>file</th><th>kind</th><th>symbol</th><th>bars</th><th>rows kept</th><th>dropped</th></tr>"
        + "".join(f"<tr><td>{html.escape(f['name'])}</td><td>{f['kind']}</td><td>{f['symbol']}</td>"
                  f"<td>{f['bars']:,}</td><td>{f['rows']:,}</td>"
                  f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in f['dropped'].items()) or '–')}</td></tr>"
                  for f in summary["files"]) + "</table>")
    ev = payload["evaluation"]
    parts.append(f"<h2>Evaluation</h2><p>{html.escape(ev['scheme'])}. Purge {ev['purge_ms'] / 60_000:g} min. "
                 f"Equity rule: {html.escape(ev['equity_rule'])} ({ev['equity_rows']:,} rows).</p>"
                 "<table><tr><th>fold</th><th>train rows</th><th>test rows</th><th>last train bar</th>"
                 "<th>test first bar</th><th>test last bar</th></tr>"
                 + "".join(f"<tr><td>{f['fold']}</td><td>{f['train_rows']:,}</td><td>{f['test_rows']:,}</td>"
                           f"<td>{f['train_last_bar']}</td><td>{f['test_first_bar']}</td><td>{f['test_last_bar']}</td></tr>"
                           for f in ev["folds"]) + "</table>")
    parts.append("<h2>Out-of-sample metrics (all folds' test rows)</h2><table>" + _HEAD)
    for kind, m in result.models.items():
        parts.append(_metric_row(html.escape(m.card.name), m.overall, m.overall["equity"]))
    parts.append(_metric_row("baseline: majority class", base["majority"], base["majority"]["equity"]))
    parts.append(_metric_row("baseline: previous direction", base["previous_direction"],
                             base["previous_direction"]["equity"]))
    parts.append("</table><p>Log-loss of the majority baseline uses the training class shares as its "
                 "probabilities; the previous-direction baseline has no probabilities (no log-loss, no AUC). "
                 "ROC AUC is one-vs-rest, macro.</p>")
    for kind, m in result.models.items():
        info = payload["models"][kind]
        ok = info["verdict"]["beats_all"] and info["verdict"]["significant"]
        parts.append(f"<h2>{html.escape(m.card.name)}</h2>"
                     f"<p class='verdict{' ok' if ok else ''}'>{html.escape(info['verdict_text'])} "
                     f"{html.escape(equity_text(m.overall['equity']))}</p>"
                     f"<p>Registry: <code>{html.escape(info['registry_path'])}</code>; final model fitted on "
                     f"{m.final['fit_rows']:,} rows (+{m.final['validation_rows']:,} for early stopping, best "
                     f"iteration {m.final['best_iteration']}); ONNX vs native max |Δp| = {m.final['onnx_max_abs_diff']:.1e}.</p>"
                     "<table>" + _HEAD)
        for f, b in zip(m.folds, result.baselines["folds"]):
            parts.append(_metric_row(f"fold {f['fold']} ({f['test_start'][:10]} → {f['test_end'][:10]})", f, f["equity"]))
            parts.append(_metric_row("&nbsp;&nbsp;majority", b["majority"], None))
            parts.append(_metric_row("&nbsp;&nbsp;previous direction", b["previous_direction"], None))
        parts.append("</table>")
        y = ds.y[m.test_rows]
        parts.append(f"<img alt='equity' src='data:image/png;base64,{_equity_plot(result, kind)}'>")
        parts.append(f"<img alt='confusion' src='data:image/png;base64,"
                     f"{_confusion_plot(m.overall['confusion'], f'{m.card.name}: confusion (out of sample)')}'>")
        parts.append(f"<img alt='calibration' src='data:image/png;base64,"
                     f"{_calibration_plot(y, m.proba, f'{m.card.name}: calibration (out of sample)')}'>")
    libs = payload["libraries"]
    parts.append("<h2>Libraries</h2><p>" + html.escape(", ".join(f"{k} {v}" for k, v in libs.items())) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: TrainResult, directory: str | Path) -> tuple[Path, Path]:
    """Write ``<directory>/<run-id>/report.json`` and ``report.html``; returns their paths."""
    run_dir = Path(directory) / result.run_id
    suffix = 1
    while run_dir.exists():  # two runs of the same data within a second
        suffix += 1
        run_dir = Path(directory) / f"{result.run_id}-{suffix}"
    run_dir.mkdir(parents=True)
    payload = report_payload(result)
    json_path, html_path = run_dir / "report.json", run_dir / "report.html"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    html_path.write_text(render_html(result, payload))
    return json_path, html_path
