"""The analytics store on real chDB, filled by the projector from a real pipeline run (the EMA
cross on the shipped sample, on a SQLite bus), checked against the pipeline's own events: its
1m bars, its realized PnL and its scoring rule for predictions.

chDB holds one data path per process: the whole module shares one (``backend``), each test
its own database. The server path runs through clickhouse-connect against a small stand-in
for ClickHouse's HTTP interface that answers from that same chDB path (no modern ClickHouse
server can run here).
"""

from __future__ import annotations

import itertools
import re
import os
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb.session
import msgspec
import pytest
from infra import wait_until

from tradepipe.bus import open_bus
from tradepipe.bus.base import Bus, Record
from tradepipe.config import Settings
from tradepipe.events import MARKET_DATA, ORDERS
from tradepipe.events.types import BarClosed, ModelInfo, PositionClosed, Prediction, PredictionGenerated
from tradepipe.models.scoring import Awaiting, HorizonScorer
from tradepipe.pipeline import RunRequest, run_pipeline
from tradepipe.read.analytics import (
    DEFAULT_DEAD_BAND, ROW_OF, ROWS, TOPICS, AnalyticsProjector, AnalyticsStore, open_analytics_store, rebuild_analytics,
)
from tradepipe.read.clickhouse import AnalyticsStoreError, AnalyticsURLError, ChdbBackend, escaped
from tradepipe.read.model import Candle, HourlyHitRate, PredictionView
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import EventStore
from tradepipe.sources import sample_paths
from tradepipe.sources.files import timeframe_ms

UTC = timezone.utc
# just over a day: two days of closed positions
WINDOW = (datetime(2014, 5, 5, 0, 0, tzinfo=UTC), datetime(2014, 5, 6, 4, 0, tzinfo=UTC))
SYMBOLS = ("EURUSD", "NZDUSD")
MANY = 100_000  # a limit above any count here
#: synthetic models predicting from each 1m bar: name -> (timeHorizon, direction rule)
MODELS = {
    "momentum": ("5m", lambda i, m: "BUY" if m.close > m.open else "SELL" if m.close < m.open else "HOLD"),
    "contrarian": ("3m", lambda i, m: "SELL" if m.close > m.open else "BUY" if m.close < m.open else "HOLD"),
    "alternating": ("15m", lambda i, m: ("BUY", "SELL", "HOLD")[i % 3]),
}


@dataclass
class Run:
    bus: Bus
    summary: dict
    bars: list[BarClosed]
    predictions: list[PredictionGenerated]
    closed: list[PositionClosed]


def predictions_of(bars: list[BarClosed]) -> list[PredictionGenerated]:
    """Predictions of the models above made at each bar (at the bar's close event), plus, from
    "momentum", some the pipeline never scores: fallbacks and predictions without a horizon."""
    out = []
    for i, bar in enumerate(bars):
        for name, (horizon, rule) in MODELS.items():
            ctx = Context(f"ml-{name}")
            ctx.begin(bar)
            kinds = [(rule(i, bar.mid), horizon, False)]
            if name == "momentum" and i % 10 == 0:
                kinds.append(("BUY", horizon, True))
            if name == "momentum" and i % 7 == 0:
                kinds.append(("SELL", "", False))
            for direction, time_horizon, fallback in kinds:
                out.append(ctx.emit(
                    PredictionGenerated, prediction=Prediction(direction=direction, confidence=0.6,
                                                               time_horizon=time_horizon),
                    model=ModelInfo(name=name), fallback=fallback, timeframe=bar.timeframe, bar_time=bar.bar_time,
                    price=bar.mid.close, timestamp=bar.timestamp))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    path = tmp_path_factory.mktemp("analytics-bus") / "bus.db"
    bus = open_bus(f"sqlite:///{path}")
    summary = run_pipeline(RunRequest(paths=sample_paths(), settings=Settings(), strategy="ema-cross",
                                      start=WINDOW[0], end=WINDOW[1]), bus)
    events = EventStore(bus)
    bars = [s.event for s in events.replay(MARKET_DATA) if type(s.event) is BarClosed]
    predictions = predictions_of(bars)
    events.append(predictions)
    closed = [s.event for s in events.replay(ORDERS) if type(s.event) is PositionClosed]
    yield Run(bus, summary, bars, predictions, closed)
    bus.close()


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="module")
def backend(chdb_dir):
    backend = ChdbBackend(chdb_dir)
    yield backend
    backend.close()


def fresh_store(backend, database: str) -> AnalyticsStore:
    backend.command(f"DROP DATABASE IF EXISTS {database}")
    return AnalyticsStore(backend, database)


@pytest.fixture(scope="module")
def projected(run, backend) -> AnalyticsStore:
    store = fresh_store(backend, "run")
    rebuild_analytics(run.bus, store)
    return store


def everything(store: AnalyticsStore) -> dict:
    """Every query's answer, to compare stores."""
    return {
        "candles": {(s, tf): store.ohlc(s, tf, limit=MANY) for s in SYMBOLS for tf in ("1m", "1h")},
        "pnl": store.pnl_by_day(),
        "hit_rates": store.hit_rate_by_hour(),
        "predictions": store.predictions(symbol="EURUSD", model="contrarian", limit=50),
        "counts": store.row_counts(),
    }


# --- queries ---------------------------------------------------------------------------------

def test_one_minute_candles_are_the_pipelines_bars(run, projected):
    for symbol in SYMBOLS:
        bars = [b for b in run.bars if b.symbol == symbol]
        candles = {c.time: c for c in projected.ohlc(symbol, "1m", limit=MANY)}
        assert bars and len(candles) == len(bars) + 1  # and the minute still open at the end
        for bar in bars:
            m = bar.mid
            assert candles[bar.bar_time] == Candle(time=bar.bar_time, open=m.open, high=m.high, low=m.low,
                                                   close=m.close, ticks=bar.tick_count), bar.bar_time


@pytest.mark.parametrize("timeframe", ["5m", "15m", "1h", "4h", "1d", "7m"])
def test_longer_candles_aggregate_the_one_minute_ones(projected, timeframe):
    step = timeframe_ms(timeframe)
    for symbol in SYMBOLS:
        groups = defaultdict(list)
        for c in projected.ohlc(symbol, "1m", limit=MANY):
            ms = int(c.time.timestamp() * 1000)
            groups[datetime.fromtimestamp(ms // step * step / 1000, UTC)].append(c)
        expected = [Candle(time=t, open=cs[0].open, high=max(c.high for c in cs), low=min(c.low for c in cs),
                           close=cs[-1].close, ticks=sum(c.ticks for c in cs)) for t, cs in sorted(groups.items())]
        assert projected.ohlc(symbol, timeframe, limit=MANY) == expected


def test_a_time_range_gives_the_whole_candles_it_overlaps_and_limit_keeps_the_latest(projected):
    every = projected.ohlc("EURUSD", "5m", limit=MANY)
    window = projected.ohlc("EURUSD", "5m", start=datetime(2014, 5, 5, 10, 2, tzinfo=UTC),
                            end=datetime(2014, 5, 5, 10, 58, tzinfo=UTC))
    assert [c.time.strftime("%H:%M") for c in window] == [f"10:{m:02d}" for m in range(0, 60, 5)]
    assert window == [c for c in every if c.time in {w.time for w in window}]
    assert projected.ohlc("EURUSD", "5m", limit=3) == every[-3:]
    assert projected.ohlc("XAUUSD", "1m") == []
    with pytest.raises(ValueError, match="not a timeframe: '5x'"):
        projected.ohlc("EURUSD", "5x")


def test_pnl_by_day_sums_the_closed_positions_to_the_runs_realized_pnl(run, projected):
    days = defaultdict(list)
    for c in run.closed:
        days[c.timestamp.date()].append(c.pnl)
    rows = projected.pnl_by_day()
    assert [(r.day, r.positions_closed) for r in rows] == [(d, len(p)) for d, p in sorted(days.items())]
    assert [r.pnl for r in rows] == pytest.approx([sum(p) for _, p in sorted(days.items())], abs=1e-9)
    assert len(rows) == 2 and rows[0].day == date(2014, 5, 5)
    assert sum(r.pnl for r in rows) == pytest.approx(run.summary["realized_pnl"], abs=1e-5)
    per_symbol = [r for s in SYMBOLS for r in projected.pnl_by_day(s)]
    assert sum(r.positions_closed for r in per_symbol) == len(run.closed)
    assert sum(r.pnl for r in per_symbol) == pytest.approx(run.summary["realized_pnl"], abs=1e-5)


def expected_hit_rates(run: Run) -> list[HourlyHitRate]:
    """The pipeline's scoring (the analytics service's: predictions resolved by the closed bars
    of their series, HorizonScorer) over the same events, by model and UTC hour."""
    made_at = defaultdict(list)
    for p in run.predictions:
        made_at[p.correlation_id].append(p)
    scorer = HorizonScorer(DEFAULT_DEAD_BAND)
    counts = defaultdict(Counter)
    for bar in run.bars:  # each bar resolves what is due, then its own predictions wait
        for then, realized in scorer.resolve(bar.symbol, bar.timeframe, bar.bar_time, bar.mid.close):
            model, hour = then.model.rsplit("@", 1)
            counts[model, int(hour)]["n"] += 1
            counts[model, int(hour)]["hits"] += realized == then.direction
        for p in made_at[bar.correlation_id]:
            direction = p.prediction.direction
            if direction != "HOLD" and not p.fallback and p.prediction.time_horizon:
                scorer.expect(p.symbol, p.timeframe, timeframe_ms(p.prediction.time_horizon),
                              Awaiting(p.bar_time, p.price, f"{p.model.name}@{p.timestamp.hour}", direction))
    return [HourlyHitRate(model=model, hour=hour, predictions=c["n"], hits=c["hits"], hit_rate=c["hits"] / c["n"])
            for (model, hour), c in sorted(counts.items())]


def test_hit_rate_by_hour_scores_predictions_as_the_pipeline_does(run, projected):
    expected = expected_hit_rates(run)
    assert {r.model for r in expected} == set(MODELS) and len(expected) > 40
    assert 0 < sum(r.hits for r in expected) < sum(r.predictions for r in expected)
    assert projected.hit_rate_by_hour() == expected
    assert projected.hit_rate_by_hour("contrarian") == [r for r in expected if r.model == "contrarian"]
    assert projected.hit_rate_by_hour("nobody") == []


def test_predictions_newest_first(run, projected):
    mine = [p for p in run.predictions if p.symbol == "EURUSD" and p.model.name == "contrarian"]
    assert projected.predictions(symbol="EURUSD", model="contrarian", limit=4) == [
        PredictionView(time=p.timestamp, symbol="EURUSD", model="contrarian", direction=p.prediction.direction,
                       confidence=0.6, price=p.price) for p in mine[::-1][:4]]
    assert len(projected.predictions(limit=7)) == 7
    assert {v.model for v in projected.predictions(model="alternating", limit=50)} == {"alternating"}


# --- tables and projection -------------------------------------------------------------------

def test_tables_are_replacing_merge_trees_partitioned_by_month_and_symbol(projected, backend):
    tables = {t["name"]: t for t in projected._query(dict, """
        SELECT name, engine, partition_key, sorting_key FROM system.tables WHERE database = 'run'""")}
    for row in ROWS:
        t = tables[row.table]
        assert (t["engine"], t["partition_key"], t["sorting_key"]) == (
            "ReplacingMergeTree", "(toYYYYMM(ts), symbol)", "symbol, ts, event_id"), row.table
        columns = projected._query(dict, "SELECT name FROM system.columns WHERE database = 'run' AND table = {t:String} "
                                         "ORDER BY position", t=row.table)
        assert tuple(c["name"] for c in columns) == row.__struct_fields__
    assert tables["positions"]["engine"] == "ReplacingMergeTree"
    partitions = projected._query(dict, "SELECT DISTINCT partition FROM system.parts WHERE database = 'run' "
                                        "AND table = 'ticks' AND active ORDER BY partition")
    assert [p["partition"] for p in partitions] == ["(201405,'EURUSD')", "(201405,'NZDUSD')"]


def test_reprojecting_after_a_crash_leaves_no_duplicates(run, projected, backend):
    store = fresh_store(backend, "crash")
    projector = AnalyticsProjector(run.bus, store, batch_size=20_000)
    first = projector.step()
    before_crash = store.load_positions("analytics")
    rest = sum(iter(projector.step, 0))
    assert projector.caught_up() and first == 20_000 and rest > 0
    # the crash: later batches were inserted, their positions never recorded
    store.save_positions("analytics", before_crash)
    for row in ROWS:  # keep the copies apart until the queries have seen them
        backend.command(f"SYSTEM STOP MERGES crash.{row.table}")
    again = AnalyticsProjector(run.bus, store, batch_size=20_000)
    assert sum(iter(again.step, 0)) == rest and again.caught_up()
    copies = store._query(dict, "SELECT count() AS n FROM crash.ticks")[0]["n"]
    assert copies > store.count("ticks") == projected.count("ticks")
    assert everything(store) == everything(projected)
    for row in ROWS:
        backend.command(f"SYSTEM START MERGES crash.{row.table}")


def test_the_projector_follows_a_live_bus(run, backend):
    bus = open_bus("memory://analytics-live")
    store = fresh_store(backend, "live")
    projector = AnalyticsProjector(bus, store, batch_size=500)
    assert projector.step() == 0 and projector.caught_up()  # no topics yet
    ensure_topics(bus)
    history = [s.event for s in itertools.islice(EventStore(run.bus).replay(MARKET_DATA), 3000)]
    EventStore(bus).append(history[:1000])
    assert projector.step() == 500 and not projector.caught_up()
    stop = threading.Event()
    worker = threading.Thread(target=projector.run, args=(stop,), kwargs={"idle_s": 0.01})
    worker.start()
    try:
        EventStore(bus).append(history[1000:3000])
        wait_until(lambda: store.count("ticks") + store.count("bars") >= 3000, 30, "the projector to catch up")
    finally:
        stop.set()
        worker.join()
    assert store.count("ticks") + store.count("bars") == 3000 and projector.caught_up()
    assert sum(store.load_positions("analytics").values()) == 3000


# --- the server path -------------------------------------------------------------------------

class ClickHouseHTTP(BaseHTTPRequestHandler):
    """Enough of ClickHouse's HTTP interface for clickhouse-connect, answered by chDB: the
    statement in the ``query`` URL parameter with its data in the body (or the statement as
    the body), ``param_<name>`` bound to ``{name:Type}``, the result in the statement's FORMAT
    (TabSeparated without one), a failure as HTTP 500 with ClickHouse's message. Transport
    settings in the URL are ignored: the store's statements carry the settings they need."""

    session: chdb.session.Session
    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        statement, data = (params["query"], body) if "query" in params else (body.decode(), b"")
        binds = {k.removeprefix("param_"): v for k, v in params.items() if k.startswith("param_")}
        self.received.append((statement, binds, data))
        sql = f"{statement}\n{data.decode()}" if data else statement
        try:
            result = self.session.query(sql, "TabSeparated", params=binds or None).bytes()
        except RuntimeError as exc:
            code = re.search(r"Code: (\d+)", str(exc))
            self._answer(500, str(exc).encode(), {"X-ClickHouse-Exception-Code": code.group(1) if code else "1"})
            return
        self._answer(200, result)

    do_GET = do_POST

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def clickhouse_http(backend):
    """A local ClickHouse HTTP endpoint over the module's chDB path: (base URL, what it received)."""
    handler = type("Handler", (ClickHouseHTTP,), {"session": chdb.session.Session(backend.path), "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"clickhouse://default:secret@127.0.0.1:{server.server_address[1]}", handler.received
    server.shutdown()
    server.server_close()
    handler.session.close()


class RecordingChdbBackend(ChdbBackend):
    """The chDB backend, noting what it runs as a server would receive it."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.sent: list[tuple[str, dict[str, str], bytes]] = []

    def command(self, sql: str) -> None:
        self.sent.append((sql, {}, b""))
        super().command(sql)

    def insert(self, statement: str, payload: bytes) -> None:
        self.sent.append((statement, {}, payload))
        super().insert(statement, payload)

    def query(self, sql: str, params) -> bytes:
        self.sent.append((sql, {k: escaped(v) for k, v in params.items()}, b""))
        return super().query(sql, params)


def test_the_server_backend_reads_and_rebuilds_through_clickhouse_connect(run, projected, clickhouse_http):
    base, _ = clickhouse_http
    reader = open_analytics_store(f"{base}/run")  # what the chDB path projected
    assert everything(reader) == everything(projected)
    writer = open_analytics_store(f"{base}/viaserver")
    writer.reset()
    other = open_bus("memory://analytics-other")  # rows and positions the rebuild must drop
    ensure_topics(other)
    EventStore(other).append(predictions_of([msgspec.structs.replace(run.bars[0], symbol="XAUUSD")]))
    AnalyticsProjector(other, writer).step()
    assert writer.predictions(symbol="XAUUSD")
    progress = []
    total = rebuild_analytics(run.bus, writer, progress.append, batch_size=50_000)  # inserts over HTTP
    assert sum(progress) == total == sum(sum(run.bus.end_offsets(t).values()) for t in TOPICS)
    assert writer.predictions(symbol="XAUUSD") == []
    assert everything(writer) == everything(projected)
    with pytest.raises(AnalyticsStoreError, match="UNKNOWN_TABLE"):
        writer._query(dict, "SELECT * FROM viaserver.nowhere")
    reader.close()
    writer.close()


def test_both_backends_receive_the_same_sql(run, backend, clickhouse_http):
    base, received = clickhouse_http

    def work(store: AnalyticsStore) -> None:
        store.reset()
        events = [s.event for s in EventStore(run.bus).replay(ORDERS)][:50]
        store.insert(ROW_OF[type(e)](e, Record("order-events", 0, i, b"")) for i, e in enumerate(events)
                     if type(e) in ROW_OF)
        store.ohlc("it's\\odd", "15m", start=WINDOW[0], end=WINDOW[1], limit=10)
        store.hit_rate_by_hour("momentum")
        store.pnl_by_day("EURUSD")
        store.predictions(symbol="EURUSD", model="contrarian", limit=3)
        store.count("orders")

    recording = RecordingChdbBackend(backend.path)
    work(AnalyticsStore(recording, "same"))
    server = open_analytics_store(f"{base}/same")
    received.clear()
    work(server)
    assert received == recording.sent[len(recording.sent) - len(received):] and len(received) > 15
    assert any("INSERT INTO same.orders" in sql and data for sql, _, data in received)
    assert ("it\\'s\\\\odd" in [p.get("symbol") for _, p, _ in received])
    server.close()
    recording.close()


# --- URLs and errors -------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://localhost/x", "bad analytics URL"),
    ("chdb://relative", "bad chDB URL"),
    ("chdb:///x?db=y", r"unknown option\(s\) \['db'\]"),
    ("chdb:///x?database=not-a-name", "bad database name 'not-a-name'"),
    ("clickhouse:///db", "no host"),
])
def test_bad_urls_are_refused_naming_the_problem(url, message):
    with pytest.raises(AnalyticsURLError, match=message):
        open_analytics_store(url)


def test_a_second_chdb_path_in_this_process_is_refused_plainly(backend, tmp_path):
    with pytest.raises(AnalyticsStoreError, match=r"this process already holds .*one data path per process"):
        open_analytics_store(f"chdb:///{tmp_path}/other")


def test_an_unreachable_server_is_named(tmp_path):
    with pytest.raises(AnalyticsStoreError, match=r"cannot reach ClickHouse at clickhouse://default:\*\*\*@127.0.0.1:9"):
        open_analytics_store("clickhouse://default:pw@127.0.0.1:9/db")


@pytest.mark.slow
def test_a_chdb_path_held_by_another_process_is_named(projected, backend):
    script = f"from tradepipe.read.analytics import open_analytics_store; open_analytics_store('chdb:///{backend.path}')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "is held by another process" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_the_cli_rebuilds_the_analytics_tables_with_the_projections(run, projected, tmp_path):
    """`tradepipe projections rebuild --analytics URL` (its own process: chDB holds one path per
    process) fills the tables with what the in-process projection holds."""
    result = subprocess.run(
        [sys.executable, "-m", "tradepipe", "projections", "rebuild", "--bus", run.bus.url,
         "--store", f"sqlite:///{tmp_path / 'read.db'}", "--analytics", f"chdb:///{tmp_path / 'analytics'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "300"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert ", ".join(f"{table}={n:,}" for table, n in projected.row_counts().items()) in result.stdout
    bad = subprocess.run([sys.executable, "-m", "tradepipe", "projections", "rebuild", "--bus", run.bus.url,
                          "--store", f"sqlite:///{tmp_path / 'read.db'}", "--analytics", "chdb:/nowhere"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert bad.returncode == 2 and "--analytics:" in bad.stderr
