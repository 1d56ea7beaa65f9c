"""The transactional projections (R8.1), one contract suite on SQLite and on PostgreSQL: the
rows a known event sequence gives, exactly-once application (re-publications, a batch applied
again, a SIGKILLed projector, a terminated PostgreSQL backend), DatabaseUpdated once per
fill, and a rebuild by replay equal to the live-built store row for row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner
from infra import POSTGRES_URL, wait_until

from tradepipe.bus import open_bus
from tradepipe.cli import app
from tradepipe.events import SYSTEM, Metadata, derived_event_id, new_event_id
from tradepipe.events.types import (
    ALL_TOPICS, DatabaseUpdated, MarketDataReceived, OrderCancelled, OrderExecuted, OrderPlaced, OrderRejected,
    PerformanceCalculated, PositionClosed, TickData, TradingStateChanged,
)
from tradepipe.pipeline import run_pipeline
from tradepipe.bus import TopicPartition
from tradepipe.read.projections import HANDLED, TABLES, TOPICS, ProjectionRunner, ReadStore, rebuild
from tradepipe.read.sql import StoreUnavailableError, StoreURLError
from tradepipe.runtime.store import EventStore

UTC = timezone.utc
T0 = datetime(2014, 5, 5, 10, 0, tzinfo=UTC)
WORKER = Path(__file__).with_name("projection_worker.py")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def tick(symbol: str, seconds: float, bid: float, ask: float) -> MarketDataReceived:
    return MarketDataReceived(event_id=new_event_id(), timestamp=at(seconds), symbol=symbol, source="test",
                              data=TickData(bid=bid, ask=ask, timestamp=at(seconds)))


def order_event(cls, seconds: float, symbol: str | None = "EURUSD", **fields):
    return cls(event_id=new_event_id(), timestamp=at(seconds), symbol=symbol, correlation_id=uuid.uuid4(),
               metadata=Metadata(version=cls.schema_version, producer="test"), **fields)


def known_sequence() -> list:
    """Two positions (EURUSD long, opened and closed; NZDUSD short, still open), an order the
    broker refused, one the risk checks refused before placement, one cancelled by a command
    (no symbol: another partition than its placement), prices arriving out of order, and an
    older performance event after a newer one."""
    return [
        tick("EURUSD", 0, 1.1000, 1.1002),
        tick("NZDUSD", 0, 0.8500, 0.8502),
        order_event(OrderPlaced, 1, order_id="o1", side="BUY", volume=1000, price=1.1002, position_id="o1"),
        order_event(OrderExecuted, 1, order_id="o1", side="BUY", volume=1000, price=1.1002, commission=0.5,
                    position_id="o1"),
        order_event(OrderPlaced, 1, "NZDUSD", order_id="o2", side="SELL", volume=1000, price=0.85, position_id="o2"),
        order_event(OrderExecuted, 1, "NZDUSD", order_id="o2", side="SELL", volume=1000, price=0.85, commission=0.4,
                    position_id="o2"),
        tick("EURUSD", 2, 1.1010, 1.1012),
        tick("EURUSD", 1, 1.0990, 1.0992),  # late: an older price must not replace the newer one
        order_event(OrderPlaced, 2, order_id="o3", side="SELL", volume=1000, price=1.1010, position_id="o1",
                    reason="take-profit"),
        order_event(OrderExecuted, 2, order_id="o3", side="SELL", volume=1000, price=1.1010, commission=0.5,
                    position_id="o1"),
        order_event(PositionClosed, 2, position_id="o1", side="BUY", volume=1000, entry_price=1.1002,
                    exit_price=1.1010, pnl=(1.1010 - 1.1002) * 1000 - 1.0, reason="take-profit", order_id="o3",
                    opened_at=at(1)),
        order_event(OrderPlaced, 3, order_id="o4", side="BUY", volume=500, price=1.1012, position_id="o4"),
        order_event(OrderRejected, 3, order_id="o4", reason="broker: market closed"),
        order_event(OrderRejected, 3, order_id="o5", reason="risk: max positions"),
        order_event(OrderPlaced, 3, order_id="o6", side="BUY", volume=700, order_type="LIMIT", price=1.09,
                    position_id="o6"),
        order_event(OrderCancelled, 4, None, order_id="o6", reason="operator"),
        order_event(PerformanceCalculated, 3, None, equity=99_999.2, realized_pnl=-0.6, unrealized_pnl=-0.2,
                    trades=1, metrics={"sharpe": 1.5, "win_rate": None}),
        order_event(PerformanceCalculated, 1, None, equity=1.0, realized_pnl=0.0, unrealized_pnl=0.0),
        order_event(TradingStateChanged, 3, None, state="HALTED", reason="manual halt: test"),
    ]


def ticks(events: list) -> int:
    return sum(isinstance(e, MarketDataReceived) for e in events)


def new_bus(path: Path):
    bus = open_bus(f"sqlite:///{path}")
    for topic in ALL_TOPICS:
        bus.create_topic(topic)
    return bus


def follow_to_the_end(runner: ProjectionRunner) -> None:
    while not runner.caught_up() or runner.store.pending_updates():
        runner.step(timeout_s=0.05)


def table_rows(store: ReadStore) -> dict[str, list[tuple]]:
    """Every row of every table, in primary key order (the outbox is empty once published)."""
    key = {"projection_positions": "1, 2"}  # the others' key is their first column
    return {table: store.db.query(f"SELECT * FROM {table} ORDER BY {key.get(table, '1')}") for table in TABLES}


def database_updates(bus) -> list[DatabaseUpdated]:
    return [s.event for s in EventStore(bus).replay(SYSTEM) if isinstance(s.event, DatabaseUpdated)]


def test_a_known_event_sequence_gives_these_rows(store_url, open_store, tmp_path):
    bus = new_bus(tmp_path / "bus.db")
    events = known_sequence()
    EventStore(bus).append(events)
    store = open_store(store_url)
    with ProjectionRunner(bus, store, batch_size=7) as runner:
        follow_to_the_end(runner)
        assert runner.stats.applied == len(events) and runner.stats.duplicates == 0

    assert [(p.symbol, p.bid, p.ask, p.mid, p.time) for p in store.prices()] == [
        ("EURUSD", 1.1010, 1.1012, (1.1010 + 1.1012) / 2, at(2)), ("NZDUSD", 0.85, 0.8502, 0.8501, at(0))]
    assert store.price("EURUSD").bid == 1.1010 and store.price("GBPUSD") is None

    closed, still_open = store.positions(open_only=False)
    assert (closed.position_id, closed.status, closed.side, closed.volume, closed.entry_price, closed.exit_price,
            closed.opened_at, closed.closed_at, closed.close_reason, closed.unrealized_pnl) == (
        "o1", "CLOSED", "BUY", 1000, 1.1002, 1.1010, at(1), at(2), "take-profit", None)
    assert closed.pnl == pytest.approx(-0.2)
    assert (still_open.position_id, still_open.status, still_open.side, still_open.opened_at, still_open.pnl) == (
        "o2", "OPEN", "SELL", at(1), None)
    # a short is marked at the ask; its opening commission is already paid
    assert still_open.unrealized_pnl == pytest.approx((0.85 - 0.8502) * 1000 - 0.4)
    assert [p.position_id for p in store.positions()] == ["o2"]

    portfolio = store.portfolio()
    # realized: closed positions' PnL after both legs' commissions (as the analytics service counts it)
    assert portfolio.realized_pnl == pytest.approx(-0.2)
    assert portfolio.unrealized_pnl == pytest.approx(-0.2 - 0.4)
    assert portfolio.equity == pytest.approx(100_000 - 0.8)
    assert (portfolio.initial_equity, portfolio.open_positions, portfolio.closed_positions, portfolio.trades,
            portfolio.last_trade_at, portfolio.trading_state, portfolio.trading_state_reason) == (
        100_000, 1, 1, 3, at(2), "HALTED", "manual halt: test")

    orders = {o.order_id: o for o in store.orders()}
    assert set(orders) == {"o1", "o2", "o3", "o4", "o6"}  # o5 was refused before it was placed
    assert (orders["o1"].status, orders["o1"].fill_price, orders["o1"].reason, orders["o1"].updated_at) == (
        "FILLED", 1.1002, "signal", at(1))
    assert (orders["o3"].status, orders["o3"].reason, orders["o3"].side) == ("FILLED", "take-profit", "SELL")
    assert (orders["o4"].status, orders["o4"].detail, orders["o4"].fill_price) == ("REJECTED", "broker: market closed", None)
    assert (orders["o6"].status, orders["o6"].detail, orders["o6"].order_type, orders["o6"].updated_at) == (
        "CANCELLED", "operator", "LIMIT", at(4))
    assert store.order("o5") is None and store.order("o6") == orders["o6"]
    assert [o.order_id for o in store.orders(symbol="NZDUSD")] == ["o2"]
    assert [o.order_id for o in store.orders(limit=2)] == ["o6", "o4"]  # latest placed first

    trades = store.trades()
    assert trades[0].order_id == "o3" and {t.order_id for t in trades[1:]} == {"o1", "o2"}  # latest first
    assert [t.order_id for t in store.trades(symbol="EURUSD", limit=1)] == ["o3"]
    fill = next(e for e in events if isinstance(e, OrderExecuted) and e.order_id == "o3")
    assert (trades[0].trade_id, trades[0].position_id, trades[0].commission, trades[0].executed_at) == (
        str(fill.event_id), "o1", 0.5, at(2))

    performance = store.performance()
    assert (performance.time, performance.equity, performance.trades, performance.metrics) == (
        at(3), 99_999.2, 1, {"sharpe": 1.5, "win_rate": None})

    # one DatabaseUpdated per fill, its id derived from the fill's
    fills = [e for e in events if isinstance(e, OrderExecuted)]
    updates = database_updates(bus)
    assert sorted((u.record_id, u.causation_id, u.correlation_id, u.store, u.table) for u in updates) == sorted(
        (f.order_id, f.event_id, f.correlation_id, store.dialect, "trades") for f in fills)
    assert {u.event_id for u in updates} == {derived_event_id(f.event_id.bytes + b"projections", 0, f.timestamp)
                                             for f in fills}
    assert store.row_counts()["inbox"] == len(events) - ticks(events)  # every applied event but the ticks
    bus.close()


def test_each_event_is_applied_once_whatever_is_delivered_again(store_url, open_store, tmp_path):
    bus = new_bus(tmp_path / "bus.db")
    events = known_sequence()
    EventStore(bus).append(events)
    store = open_store(store_url)
    # a projector that committed its batch and died before publishing (and before it could tell)
    consumer = bus.consumer(None)
    consumer.assign(bus.partitions_of(ALL_TOPICS))
    records = consumer.poll(1000)
    consumer.close()
    decoded = [EventStore(bus).codec.decode(r.value) for r in records]
    offsets = {r.tp: r.offset + 1 for r in records}
    first = store.apply(decoded, offsets)
    assert (first.applied, first.duplicates, first.fills) == (len(events), 0, 3)
    rows = table_rows(store)
    # the same batch applied again (its commit's acknowledgement lost): nothing counts twice
    again = store.apply(decoded, offsets)
    # only the ticks pass again: a price keeps the later event time, re-applying one changes nothing
    assert (again.applied, again.duplicates, again.fills) == (ticks(events), len(events) - ticks(events), 0)
    assert table_rows(store) == rows
    # a producer that crashed and published everything again: skipped by eventId
    EventStore(bus).append(events)
    with ProjectionRunner(bus, store) as runner:
        follow_to_the_end(runner)
        assert runner.stats.duplicates == len(events) - ticks(events) and runner.stats.published == 3
    after = table_rows(store)
    assert caught_up(bus, store)
    del after["projection_positions"], rows["projection_positions"]  # they moved past the repeats
    assert len(rows.pop("outbox")) == 3 and after.pop("outbox") == []  # published, then removed
    assert after == rows and store.portfolio().equity == pytest.approx(100_000 - 0.8)
    # the restarted projector published the dead one's DatabaseUpdated, once each
    assert len(database_updates(bus)) == 3
    bus.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_rebuild_equals_the_live_built_projections_row_for_row(backend, ema_cross_run, tmp_path, open_store,
                                                                 postgres_schemas):
    url = {"sqlite": lambda name: f"sqlite:///{tmp_path}/{name}.db", "postgresql": lambda _: postgres_schemas("rb")}
    live, rebuilt = open_store(url[backend]("live")), open_store(url[backend]("rebuilt"))
    bus_url = f"sqlite:///{tmp_path}/bus.db"
    stop = threading.Event()
    with open_bus(bus_url) as bus, open_bus(bus_url) as followed:
        runner = ProjectionRunner(followed, live, batch_size=300)  # started before the topics exist
        thread = threading.Thread(target=runner.run, args=(stop,))
        thread.start()
        try:
            summary = run_pipeline(ema_cross_run, bus)
            wait_until(lambda: caught_up(bus, live), what="the live projector to catch up")
        finally:
            stop.set()
            thread.join(30)
            runner.close()
        assert runner.stats.batches > 1 and runner.stats.published == summary["fills"] > 0
        stats = rebuild(bus, rebuilt, batch_size=1000)

    assert stats.applied == runner.stats.applied and stats.records == runner.stats.records
    live_rows, rebuilt_rows = table_rows(live), table_rows(rebuilt)
    assert live_rows == rebuilt_rows
    assert len(live_rows["trades"]) == summary["fills"] and not live_rows["outbox"]
    assert len([r for r in live_rows["positions"] if r[10] is not None]) == summary["positions_closed"]
    portfolio = live.portfolio()
    assert portfolio == rebuilt.portfolio() and portfolio.open_positions == len(live.positions()) > 0
    assert portfolio.realized_pnl == pytest.approx(summary["realized_pnl"], abs=1e-6)
    assert portfolio.unrealized_pnl == pytest.approx(summary["unrealized_pnl"], abs=1e-6)


def caught_up(bus, store: ReadStore) -> bool:
    """Whether ``store`` has applied every record of the bus and published its updates (read
    from the store, so it may be asked from another thread than the projector's)."""
    offsets = store.offsets()
    return (all(offsets.get(TopicPartition(t, p), 0) >= end for t in TOPICS for p, end in bus.end_offsets(t).items())
            and not store.pending_updates())


@pytest.mark.slow
# small batches, so the kills land in the middle of some transactions (PostgreSQL syncs each commit: fewer)
@pytest.mark.parametrize("backend, batch_size", [("sqlite", 10), ("postgresql", 40)])
def test_a_projector_killed_mid_stream_leaves_no_half_applied_event(backend, batch_size, bus_url, recorded_run,
                                                                    tmp_path, open_store, postgres_schemas):
    store_url = f"sqlite:///{tmp_path}/read.db" if backend == "sqlite" else postgres_schemas("kill")
    store = open_store(store_url)
    _, summary = recorded_run
    with open_bus(bus_url, create=False) as bus:
        total = sum(sum(bus.end_offsets(t).values()) for t in TOPICS)
        kills = 0
        for share in (0.2, 0.5, 0.8):
            worker = start_worker(bus_url, store_url, batch_size)
            try:
                wait_until(lambda: sum(store.offsets().values()) >= share * total or worker.poll() is not None,
                           what=f"the projector to pass {share:.0%}")
            finally:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGKILL)
                    kills += 1
                worker.wait(10)
            assert_consistent(bus, store)
        assert kills == 3, "the projector finished before it could be killed: give it more work"
        worker = start_worker(bus_url, store_url, batch_size)
        assert worker.wait(60) == 0
        assert caught_up(bus, store)
        rebuilt = open_store(f"sqlite:///{tmp_path}/rebuilt.db" if backend == "sqlite" else postgres_schemas("kill"))
        rebuild(bus, rebuilt)
        assert table_rows(store) == table_rows(rebuilt)
        # every fill announced; repeats (a kill between publish and outbox delete) are the identical event
        updates = database_updates(bus)
        assert len({u.event_id for u in updates}) == len({u.causation_id for u in updates}) == summary["fills"]
        assert len({(u.event_id, u.record_id, u.timestamp) for u in updates}) == summary["fills"]


def start_worker(bus_url: str, store_url: str, batch_size: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), bus_url, store_url, str(batch_size)],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def assert_consistent(bus, store: ReadStore) -> None:
    """Nothing half-applied: the inbox holds exactly the events (ticks aside) before the stored
    positions, and every fill, placement and close it names has its row, and no more."""
    offsets = store.offsets()
    replayed = EventStore(bus)
    before = {str(s.event.event_id): s.event.type for t in TOPICS for s in replayed.replay(t)
              if s.record.offset < offsets.get(s.record.tp, 0) and s.event.type in HANDLED
              and not isinstance(s.event, MarketDataReceived)}
    inbox = dict(store.db.query("SELECT event_id, event_type FROM inbox"))
    assert inbox == before
    fills = {r[0] for r in store.db.query("SELECT trade_id FROM trades")}
    assert fills == {e for e, kind in inbox.items() if kind == "OrderExecuted"}
    placed = store.db.query("SELECT count(*) FROM orders WHERE placed_at IS NOT NULL")[0][0]
    assert placed == sum(kind == "OrderPlaced" for kind in inbox.values())
    closes = store.db.query("SELECT count(*) FROM positions WHERE closed_at IS NOT NULL")[0][0]
    assert closes == sum(kind == "PositionClosed" for kind in inbox.values())


def test_a_projector_reconnects_when_its_postgres_backend_is_terminated(bus_url, postgres_schemas, open_store):
    app_name = f"tp-proj-{uuid.uuid4().hex[:8]}"
    store = open_store(f"{postgres_schemas('term')}&application_name={app_name}", reconnect_timeout_s=30)
    stop = threading.Event()
    terminated = 0
    with open_bus(bus_url, create=False) as bus, psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        runner = ProjectionRunner(bus, store, batch_size=100)
        thread = threading.Thread(target=runner.run, args=(stop,))
        thread.start()
        try:
            for _ in range(3):
                time.sleep(0.2)
                terminated += admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                            "WHERE application_name = %s", (app_name,)).fetchone()[0]
            wait_until(lambda: caught_up(bus, store), what="the projector to catch up")
        finally:
            stop.set()
            thread.join(30)
            runner.close()
        assert terminated >= 2 and store.db.reconnects >= 2
        rebuilt = open_store(postgres_schemas("term"))
        rebuild(bus, rebuilt)
        assert table_rows(store) == table_rows(rebuilt)


def test_bad_store_urls_are_clear_errors(tmp_path):
    from tradepipe.read.projections import open_read_store

    with pytest.raises(StoreURLError, match=r"mysql://h/db.*unknown scheme 'mysql'"):
        open_read_store("mysql://h/db")
    with pytest.raises(StoreURLError, match="expected sqlite:///file.db"):
        open_read_store("tradepipe-read.db")
    with pytest.raises(StoreURLError, match="schema 'a-b' is not a plain SQL identifier"):
        open_read_store(f"{POSTGRES_URL}?schema=a-b")
    with pytest.raises(StoreUnavailableError, match=r"postgresql://postgres:\*\*\*@127.0.0.1:1/test"):
        open_read_store("postgresql://postgres:secret@127.0.0.1:1/test")  # nothing listens; the password is hidden
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnavailableError, match="dir.db"):
        open_read_store(f"sqlite:///{tmp_path}/dir.db")


def test_cli_rebuilds_the_projections_of_a_bus_file_and_shows_their_status(bus_url, recorded_run, tmp_path):
    store_url = f"sqlite:///{tmp_path}/read.db"
    cli = CliRunner()
    result = cli.invoke(app, ["projections", "rebuild", "--bus", bus_url, "--store", store_url])
    assert result.exit_code == 0, result.output
    fills = recorded_run[1]["fills"]
    assert "events applied" in result.stdout and f"trades={fills}" in result.stdout
    status = cli.invoke(app, ["projections", "status", "--store", store_url, "--bus", bus_url])
    assert status.exit_code == 0, status.output
    assert "market-data-events" in status.stdout and "projection_positions" in status.stdout
    bad = cli.invoke(app, ["projections", "status", "--store", "mysql://x/y"])
    assert bad.exit_code == 2 and "unknown scheme 'mysql'" in bad.output
