"""The run report (R7.4): self-contained HTML, equity.png and summary.json, from events or
from a bus, with the numbers of the analytics service itself."""

from __future__ import annotations

import itertools
import json

import pytest

from tradepipe.bus import open_bus
from tradepipe.config import Settings
from tradepipe.events.types import ALL_TOPICS, MarketDataReceived, OrderExecuted, PositionClosed
from tradepipe.pipeline import feature_services
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import EventStore
from tradepipe.services.analytics import PerformanceAnalytics
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources import sample_paths
from tradepipe.sources.files import read_ticks
from tradepipe.trading.report import report_from_bus, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TICKS = 3000
VOLUME = 100_000.0


def sample_ticks(limit: int) -> list:
    path = next(p for p in sample_paths() if p.name.startswith("eurusd"))
    return list(itertools.islice(read_ticks(path), limit))


def round_trip(entry: MarketDataReceived, exit: MarketDataReceived) -> list:
    """A long bought at ``entry``'s ask and sold at ``exit``'s bid, no commission."""
    ctx = Context("trading-engine")
    ctx.begin(entry)
    opened = ctx.emit(OrderExecuted, order_id="o1", position_id="o1", side="BUY", volume=VOLUME, price=entry.data.ask)
    ctx.begin(exit)
    pnl = (exit.data.bid - entry.data.ask) * VOLUME
    return [opened,
            ctx.emit(OrderExecuted, order_id="o2", position_id="o1", side="SELL", volume=VOLUME, price=exit.data.bid),
            ctx.emit(PositionClosed, position_id="o1", side="BUY", volume=VOLUME, entry_price=entry.data.ask,
                     exit_price=exit.data.bid, pnl=pnl, reason="horizon", order_id="o2", opened_at=entry.timestamp)]


def in_time_order(events: list) -> list:
    rank = {topic: i for i, topic in enumerate(PerformanceAnalytics.inputs)}
    return sorted(events, key=lambda e: (e.timestamp_ms, rank[e.topic]))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A SQLite bus holding the market data of the first sample ticks (through the bridge and
    the feature services, as `tradepipe run` writes it) and one hand-built round trip; and the
    same events in memory."""
    path = tmp_path_factory.mktemp("bus") / "run.db"
    bus = open_bus("sqlite:///" + str(path))
    ensure_topics(bus, ALL_TOPICS)
    published: list = []
    kernel = InProcessPipeline(feature_services(("1m",)), bus, on_event=published.append)
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    for raw in sample_ticks(TICKS):
        kernel.feed_all(bridge.handle_tick(raw, ctx))
    kernel.close()
    ticks = [e for e in published if type(e) is MarketDataReceived]
    orders = round_trip(ticks[1000], ticks[2000])
    EventStore(bus).append(orders)
    events = in_time_order([e for e in published if e.topic in PerformanceAnalytics.inputs] + orders)
    yield bus, events, orders
    bus.close()


def test_a_report_from_a_sqlite_bus_is_the_report_of_its_events(recorded, tmp_path):
    bus, events, orders = recorded
    progress: list[int] = []
    minutely = Settings(analytics={"sample_s": 60})  # a short run: enough returns to sample
    html_path = report_from_bus(bus, tmp_path / "bus", title="sample run", notes=["in-sample: a test"],
                                on_progress=progress.append, settings=minutely)
    direct = write_report(events, tmp_path / "direct", title="sample run", notes=["in-sample: a test"],
                          settings=minutely)
    from_bus = json.loads((html_path.parent / "summary.json").read_text())
    assert from_bus == json.loads((direct.parent / "summary.json").read_text())
    assert sum(progress) == len(events)
    summary = from_bus["summary"]
    pnl = orders[-1].pnl
    assert summary["realized_pnl"] == pytest.approx(pnl) and summary["trades"] == 1
    assert summary["equity"] == pytest.approx(Settings().trading.initial_equity + pnl)
    assert summary["win_rate"] == (1.0 if pnl > 0 else 0.0)
    assert 0 < summary["exposure"] < 1 and summary["returns_sampled"] > 20
    assert from_bus["events"]["MarketDataReceived"] == sum(type(e) is MarketDataReceived for e in events)
    assert from_bus["events"]["BarClosed"] > 40 and from_bus["events"]["PositionClosed"] == 1


def test_the_html_is_self_contained_with_metrics_plots_notes_and_trades(recorded, tmp_path):
    _, events, orders = recorded
    html_path = write_report(events, tmp_path, title="sample run", notes=["in-sample: the models were trained on this data"])
    text = html_path.read_text()
    assert text.index("in-sample: the models were trained on this data") < text.index("Sharpe")
    for label in ("max drawdown", "win rate", "profit factor", "exposure", "Trades", "EURUSD"):
        assert label in text
    assert f"{orders[-1].pnl:,.2f}" in text  # the trade's row
    assert text.count("data:image/png;base64,") == 2  # equity + drawdown, EURUSD prices (no predictions: no hit rates)
    assert "src='http" not in text and "No trades" not in text
    png = (tmp_path / "equity.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    from matplotlib.image import imread

    height, width = imread(tmp_path / "equity.png").shape[:2]
    assert width > 400 and height > 250


def test_an_empty_run_still_makes_a_valid_report_saying_no_trades(tmp_path):
    html_path = write_report([], tmp_path, title="empty")
    text = html_path.read_text()
    assert "No trades" in text and text.rstrip().endswith("</html>")
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert summary["trades"] == 0 and summary["sharpe"] is None and summary["equity"] == Settings().trading.initial_equity
    assert (tmp_path / "equity.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_run_without_orders_says_no_trades(recorded, tmp_path):
    _, events, _ = recorded
    market_only = [e for e in events if type(e) not in (OrderExecuted, PositionClosed)]
    text = write_report(market_only, tmp_path, title="features only").read_text()
    assert "No trades" in text and "Trades" not in text.split("No trades", 1)[1]


def test_hit_rates_of_the_models_and_the_ensemble_are_charted(recorded, tmp_path):
    from datetime import timedelta

    from tradepipe.events.types import BarClosed, ModelInfo, Prediction, PredictionGenerated, TradingSignalGenerated

    _, events, _ = recorded
    bars = [e for e in events if type(e) is BarClosed and e.timeframe == "1m"]
    ctx = Context("ml")
    made = []
    for b in bars[:-5]:
        ctx.begin(b)
        made.append(ctx.emit(PredictionGenerated, prediction=Prediction(direction="BUY", confidence=0.5, time_horizon="5m"),
                             model=ModelInfo(name="XGBoost-v1"), timeframe="1m", bar_time=b.bar_time, price=b.mid.close))
        made.append(ctx.emit(TradingSignalGenerated, direction="HOLD", confidence=0.5, timeframe="1m",
                             bar_time=b.bar_time, price=b.mid.close))
    write_report(in_time_order(events + made), tmp_path, title="with predictions")
    text = (tmp_path / "report.html").read_text()
    assert text.count("data:image/png;base64,") == 3 and "hit rate XGBoost-v1" in text and "hit rate ensemble" in text
    rates = json.loads((tmp_path / "summary.json").read_text())["summary"]["hit_rates"]
    resolved = sum(1 for b in bars[:-5] if any(c.bar_time >= b.bar_time + timedelta(minutes=5) for c in bars))
    assert rates["XGBoost-v1"]["resolved"] == rates["ensemble"]["resolved"] == resolved
    assert rates["ensemble"]["holds"] == resolved and rates["ensemble"]["hit_rate"] is None
