"""The run report (R7.4): ``report.html``, ``equity.png`` and ``summary.json`` of a run.

Every number comes from a :class:`~tradepipe.services.analytics.PerformanceAnalytics` fed the
run's events in event-time order, the same code the live service runs; the report itself
only collects what it draws (mid closes of the models' timeframe, entry and exit fills, the
first closed trades). The HTML is self-contained (plots as base64 PNGs through matplotlib's
Agg backend, outside pyplot): the notes (e.g. that the models were trained on this data)
first, the metrics, equity and drawdown, price per symbol with entries (triangles up for BUY,
down for SELL) and exits (x), per-model and ensemble hit rates, the first trades.

From a bus (:func:`report_from_bus`), the topics the analytics read are replayed and merged
by event time, ties in topic order (market data first: a bar is closed before the
predictions it causes, and those before the signal, the signal before the orders).
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tradepipe.bus.base import Bus
from tradepipe.config import Settings
from tradepipe.events import Codec, Event, get_codec
from tradepipe.events.types import BarClosed, OrderExecuted, PositionClosed
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import EventStore
from tradepipe.services.analytics import PerformanceAnalytics, event_ms as _ms
from tradepipe.trading.performance import drawdown_series

TRADES_SHOWN = 200
PROGRESS_EVERY = 10_000
PLOT_POINTS = 4_000  # a price line is thinned to about this many points


class RunView:
    """What the report draws, gathered from the events (no metric is computed here)."""

    def __init__(self, timeframe: str) -> None:
        self.timeframe = timeframe
        self.prices: dict[str, tuple[list[int], list[float]]] = {}  # symbol -> bar times (ms), mid closes
        self.entries: dict[str, list[tuple[int, float, str]]] = {}  # symbol -> (time ms, price, side)
        self.exits: dict[str, list[tuple[int, float]]] = {}
        self.trades: list[PositionClosed] = []
        self.counts: Counter[str] = Counter()

    def add(self, event: Event) -> None:
        cls = type(event)
        self.counts[cls.__name__] += 1
        symbol = event.symbol or ""
        if cls is BarClosed and event.timeframe == self.timeframe:
            times, mids = self.prices.setdefault(symbol, ([], []))
            times.append(_ms(event.bar_time))
            mids.append(event.mid.close)
        elif cls is OrderExecuted:
            if event.position_id == event.order_id:
                self.entries.setdefault(symbol, []).append((event.timestamp_ms, event.price, event.side))
            else:
                self.exits.setdefault(symbol, []).append((event.timestamp_ms, event.price))
        elif cls is PositionClosed and len(self.trades) < TRADES_SHOWN:
            self.trades.append(event)


class ReplayedRun:
    """The analytics and the view after a run's events."""

    def __init__(self, analytics: PerformanceAnalytics, view: RunView, performance_events: int) -> None:
        self.analytics = analytics
        self.view = view
        self.performance_events = performance_events


def replay_events(events: Iterable[Event], *, settings: Settings | None = None,
                  on_progress: Callable[[int], None] | None = None) -> ReplayedRun:
    """Feed ``events`` (in event-time order) to a fresh analytics service and a view;
    ``on_progress(n)`` is called every ``PROGRESS_EVERY`` events with the count handled since."""
    settings = settings or Settings()
    analytics = PerformanceAnalytics.from_settings(settings)
    view = RunView(settings.models.timeframe)
    ctx = Context(analytics.name)
    emitted = count = 0
    for count, event in enumerate(events, 1):
        ctx.begin(event)
        emitted += len(analytics.handle(event, ctx))
        view.add(event)
        if on_progress is not None and count % PROGRESS_EVERY == 0:
            on_progress(PROGRESS_EVERY)
    if on_progress is not None and count % PROGRESS_EVERY:
        on_progress(count % PROGRESS_EVERY)
    return ReplayedRun(analytics, view, emitted)


def write_report(events: Iterable[Event], out_dir: str | Path, *, title: str, notes: Sequence[str] = (),
                 settings: Settings | None = None, on_progress: Callable[[int], None] | None = None) -> Path:
    """Replay ``events`` through the analytics and write ``out_dir``/report.html, equity.png
    and summary.json; returns the HTML's path."""
    return render_report(replay_events(events, settings=settings, on_progress=on_progress), out_dir,
                         title=title, notes=notes)


def bus_events(bus: Bus, codec: Codec, on_skip: Callable[[str], None] | None = None) -> Iterator[Event]:
    """Every event of the analytics' topics on ``bus``, merged by event time, ties in topic
    order; records that do not decode are passed to ``on_skip`` (with where they are)."""
    store = EventStore(bus, codec)
    present = bus.topics()
    streams = [
        ((stored.record.timestamp_ms, rank, stored) for stored in store.replay(topic))
        for rank, topic in enumerate(PerformanceAnalytics.inputs) if topic in present
    ]
    for _, _, stored in heapq.merge(*streams, key=lambda item: item[:2]):
        if stored.event is not None:
            yield stored.event
        elif on_skip is not None:
            r = stored.record
            on_skip(f"{r.topic}/{r.partition}@{r.offset}: {stored.error}")


def report_from_bus(bus: Bus, out_dir: str | Path, *, title: str = "tradepipe run", notes: Sequence[str] = (),
                    settings: Settings | None = None, on_progress: Callable[[int], None] | None = None) -> Path:
    """:func:`write_report` of the run recorded on ``bus`` (the codec of ``settings.bus``)."""
    settings = settings or Settings()
    skipped: list[str] = []
    replayed = replay_events(bus_events(bus, get_codec(settings.bus.codec), skipped.append),
                             settings=settings, on_progress=on_progress)
    if skipped:
        notes = [*notes, f"{len(skipped):,} records could not be decoded and were left out (first: {skipped[0]})"]
    return render_report(replayed, out_dir, title=title, notes=notes)


# --- output ----------------------------------------------------------------------------------

def render_report(run: ReplayedRun, out_dir: str | Path, *, title: str, notes: Sequence[str] = ()) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = run.analytics.summary()
    equity_png = _equity_plot(run.analytics)
    (out / "equity.png").write_bytes(equity_png)
    payload = {"title": title, "notes": list(notes), "summary": summary, "events": dict(sorted(run.view.counts.items())),
               "performance_events": run.performance_events}
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    path = out / "report.html"
    path.write_text(_html(run, summary, equity_png, title, notes))
    return path


def _figure(width: float, height: float, rows: int = 1):
    """A figure outside pyplot (no global backend state; PNGs render through Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(rows, 1, sharex=True) if rows > 1 else fig.subplots()


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{alt}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _times(ms: Sequence[int]) -> np.ndarray:
    return np.asarray(ms, dtype="int64").astype("datetime64[ms]")


def _equity_plot(analytics: PerformanceAnalytics) -> bytes:
    fig, (top, bottom) = _figure(9, 5, rows=2)
    times, equity = _times(analytics.curve_ms), analytics.curve_equity
    top.plot(times, equity, linewidth=1, color="tab:blue")
    top.axhline(analytics.initial_equity, color="grey", linewidth=0.6, linestyle=":")
    top.set_ylabel("equity")
    top.set_title("Equity (marked to bid/ask) and drawdown")
    bottom.fill_between(times, [-100 * d for d in drawdown_series(equity)], 0, color="tab:red", alpha=0.4, step="post")
    bottom.set_ylabel("drawdown (%)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)


def _price_plot(view: RunView, symbol: str) -> bytes:
    fig, ax = _figure(9, 3.4)
    times, mids = view.prices.get(symbol, ([], []))
    stride = max(len(times) // PLOT_POINTS, 1)
    ax.plot(_times(times[::stride]), mids[::stride], linewidth=0.8, color="grey",
            label=f"{view.timeframe} mid close")
    for side, marker, color in (("BUY", "^", "tab:green"), ("SELL", "v", "tab:red")):
        points = [(t, p) for t, p, s in view.entries.get(symbol, ()) if s == side]
        if points:
            t, p = zip(*points)
            ax.scatter(_times(t), p, marker=marker, color=color, s=28, zorder=3,
                       label=f"entry {side}")
    exits = view.exits.get(symbol, ())
    if exits:
        t, p = zip(*exits)
        ax.scatter(_times(t), p, marker="x", color="black", s=22, zorder=3, label="exit")
    ax.set_title(symbol)
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)


def _hit_rate_plot(hit_rates: dict[str, dict[str, Any]]) -> bytes:
    fig, ax = _figure(max(4.5, 1.4 * len(hit_rates) + 2), 3.4)
    names = list(hit_rates)
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "hit_rate", "BUY/SELL predictions"), (0.2, "hit_rate_all", "all (HOLD included)")):
        values = [hit_rates[n][key] or 0.0 for n in names]
        bars = ax.bar(x + offset, values, width=0.4, label=label)
        counts = [hit_rates[n]["directional" if key == "hit_rate" else "resolved"] for n in names]
        for bar, n in zip(bars, counts):
            ax.annotate(f"n={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("hit rate")
    ax.set_title("Hit rate against realized moves")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _f(value: Any, fmt: str = "{:,.4f}") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return fmt.format(value)
    return html.escape(str(value))


def _pct(value: float | None) -> str:
    return _f(value, "{:.2%}")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.note { padding: 0.6em 1em; border-left: 4px solid #c00; background: #fdeaea; font-size: 1.05em; }
img { margin: 0.3em; vertical-align: top; }
"""


def _metrics_table(s: dict[str, Any]) -> str:
    rows = [
        ("equity", _f(s["equity"], "{:,.2f}")), ("return", _pct(s["return"])),
        ("realized PnL", _f(s["realized_pnl"], "{:,.2f}")), ("unrealized PnL", _f(s["unrealized_pnl"], "{:,.2f}")),
        ("max drawdown", f"{_pct(s['max_drawdown'])} ({_f(s['max_drawdown_peak'])} → {_f(s['max_drawdown_trough'])})"),
        ("Sharpe (annualised)", _f(s["sharpe"], "{:.2f}")), ("Sortino (annualised)", _f(s["sortino"], "{:.2f}")),
        ("trades", _f(s["trades"])), ("win rate", _pct(s["win_rate"])),
        ("profit factor", _f(s["profit_factor"], "{:.2f}")), ("average win", _f(s["average_win"], "{:,.2f}")),
        ("average loss", _f(s["average_loss"], "{:,.2f}")), ("exposure", _pct(s["exposure"])),
        ("open positions at the end", _f(s["open_positions"])),
    ]
    rows += [(f"hit rate {model}", f"{_pct(h['hit_rate'])} of {h['directional']:,} BUY/SELL; {_pct(h['hit_rate_all'])} "
              f"of {h['resolved']:,} ({h['holds']:,} HOLD)") for model, h in s["hit_rates"].items()]
    return ("<table>" + "".join(f"<tr><td>{name}</td><td>{value}</td></tr>" for name, value in rows) + "</table>"
            f"<p>Sharpe and Sortino: returns of equity sampled every {s['sample_period_s']:g} s of event time "
            f"({s['returns_sampled']:,} returns), annualised by √{s['periods_per_year']:,.0f} periods a year "
            "(24 h × 5 days × 52 weeks of trading), risk-free rate 0.</p>")


def _trades_table(trades: list[PositionClosed], total: int) -> str:
    head = ("<tr><th>closed</th><th>symbol</th><th>side</th><th>volume</th><th>entry</th><th>exit</th>"
            "<th>PnL</th><th>reason</th><th>opened</th></tr>")
    rows = "".join(
        f"<tr><td>{t.timestamp:%Y-%m-%d %H:%M:%S}</td><td>{_f(t.symbol)}</td><td>{t.side}</td>"
        f"<td>{t.volume:,.0f}</td><td>{t.entry_price:.5f}</td><td>{t.exit_price:.5f}</td><td>{t.pnl:,.2f}</td>"
        f"<td>{html.escape(t.reason)}</td><td>{'' if t.opened_at is None else f'{t.opened_at:%H:%M:%S}'}</td></tr>"
        for t in trades)
    shown = f" (the first {len(trades)} of {total:,})" if total > len(trades) else ""
    return f"<h2>Trades{shown}</h2><table>{head}{rows}</table>"


def _html(run: ReplayedRun, summary: dict[str, Any], equity_png: bytes, title: str, notes: Sequence[str]) -> str:
    view = run.view
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'><b>Note:</b> {html.escape(note)}</p>" for note in notes]
    span = f"{_f(summary['first_event'])} → {_f(summary['last_event'])}" if summary["first_event"] else "no events"
    parts.append(f"<p>{sum(view.counts.values()):,} events, {span}: "
                 + ", ".join(f"{n:,} {html.escape(k)}" for k, n in sorted(view.counts.items())) + ".</p>")
    if not summary["trades"] and not any(view.entries.values()):
        parts.append("<p class='note'><b>No trades:</b> no order was filled in this run.</p>")
    parts.append("<h2>Performance</h2>" + _metrics_table(summary))
    parts.append(_img(equity_png, "equity and drawdown"))
    if view.prices:
        parts.append("<h2>Prices, entries and exits</h2>")
        parts += [_img(_price_plot(view, symbol), f"price {html.escape(symbol)}") for symbol in sorted(view.prices)]
    if summary["hit_rates"]:
        parts.append("<h2>Hit rates</h2>" + _img(_hit_rate_plot(summary["hit_rates"]), "hit rates"))
    if view.trades:
        parts.append(_trades_table(view.trades, summary["trades"]))
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["ReplayedRun", "RunView", "bus_events", "render_report", "replay_events", "report_from_bus", "write_report"]
