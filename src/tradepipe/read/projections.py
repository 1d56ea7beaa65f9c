"""The transactional projections (R8.1): current prices, orders, trades, positions, the
portfolio, the trading state and the latest performance, built only from events into SQLite
or PostgreSQL (:mod:`tradepipe.read.sql`), exactly once, and rebuildable by replay.

**Exactly once without the bus's commits.** :class:`ProjectionRunner` reads every partition of
the topics it needs with no consumer group, from the positions the store itself keeps
(``projection_positions``). Each polled batch is applied in ONE transaction together with the
batch's new positions and the eventIds it applied (``inbox``): a crash anywhere leaves either
the whole batch or none of it, and a restart resumes exactly after the last committed batch.
An event whose eventId is already in the inbox (a producer that crashed and published again)
is skipped. Ticks are the exception: a tick only moves its symbol's latest price, an upsert
that keeps the later event time, so applying one twice changes nothing, and the inbox is
spared one row per tick.

**DatabaseUpdated** (one per newly applied OrderExecuted) goes through an outbox: the fill's
row in ``outbox`` is written in the batch's transaction, published after the commit, then
deleted. A crash between commit and publish publishes it at the next start; a crash between
publish and delete publishes it again, as the identical event: its id is derived from the
fill's (:func:`~tradepipe.events.derived_event_id`), so consumers deduplicate it.

**Rebuilt = live, row for row.** Partitions are read in a different interleaving live (as the
records arrive) than in a rebuild (batches of whatever is there), so no row may depend on the
order events of different partitions are applied in. Every write is a merge that does not
depend on it: a row per event (trades, inbox), set-once fields (an order's placement, a
position's opening fill), and "latest" fields kept by the greatest (event time, rank, eventId).
Sums over many rows (realized PnL, equity) are not stored but computed at query time in a
fixed order, and unrealized PnL from the latest prices. Events of one position or order share
their symbol, hence their partition, and keep their order anyway.

Positions are counted as the trading engine opens and closes them, and valued as the
performance analytics service does (:mod:`tradepipe.services.analytics`), so the portfolio and
the latest PerformanceCalculated agree: a position (id = the opening order's id) is opened by
its first fill (OrderExecuted whose positionId is its own orderId); PositionClosed books the
closed units and their PnL after both legs' commissions, which is what realized PnL sums. An
open position's unrealized PnL is its move to the latest bid (long) or ask (short), or none
before any price, less the opening commission of its open units.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from tradepipe.bus.base import Bus, BusError, Record, TopicPartition
from tradepipe.events import MARKET_DATA, ORDERS, PERFORMANCE, SYSTEM, Event, Metadata, derived_event_id
from tradepipe.events.codec import Codec, DecodeError, JsonCodec
from tradepipe.events.types import (
    DatabaseUpdated, MarketDataReceived, OrderCancelled, OrderExecuted, OrderPlaced, OrderRejected,
    PerformanceCalculated, PositionClosed, TradingStateChanged,
)
from tradepipe.read.model import OrderView, PerformanceView, PortfolioView, PositionView, PriceView, TradeView
from tradepipe.read.sql import (
    Database, StoreError, StoreUnavailableError, Transaction, iso, open_database, redacted,
)
from tradepipe.runtime.store import TYPE_HEADER, publish

log = logging.getLogger(__name__)

PRODUCER = "projections"
TOPICS = (MARKET_DATA, ORDERS, PERFORMANCE, SYSTEM)
SCHEMA_VERSION = "1"
#: a position whose closed units reach this share of its volume is closed (rounding of partial closes)
CLOSED_SHARE = 1 - 1e-9
INBOX_CHUNK = 500  # eventIds per inbox look-up (SQLite's host parameter limit is far above)
#: the order statuses by precedence when two events of an order share an event time (a
#: paper fill has its placement's time)
STATUS_RANK = {"PLACED": 0, "CANCELLED": 1, "REJECTED": 2, "FILLED": 3}

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS projection_meta (
        key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS projection_positions (
        topic TEXT NOT NULL, partition_no INTEGER NOT NULL, next_offset BIGINT NOT NULL,
        PRIMARY KEY (topic, partition_no))""",
    """CREATE TABLE IF NOT EXISTS inbox (
        event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS outbox (
        trade_id TEXT PRIMARY KEY)""",
    """CREATE TABLE IF NOT EXISTS prices (
        symbol TEXT PRIMARY KEY, bid DOUBLE PRECISION NOT NULL, ask DOUBLE PRECISION NOT NULL,
        time TEXT NOT NULL, event_id TEXT NOT NULL)""",
    # columns other than order_id and the status are NULL until the event that sets them is seen
    """CREATE TABLE IF NOT EXISTS orders (
        order_id TEXT PRIMARY KEY, symbol TEXT, side TEXT, volume DOUBLE PRECISION, order_type TEXT,
        reason TEXT, position_id TEXT, placed_at TEXT, fill_price DOUBLE PRECISION,
        status TEXT NOT NULL, status_rank INTEGER NOT NULL, status_at TEXT NOT NULL,
        status_event_id TEXT NOT NULL, detail TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS trades (
        trade_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
        volume DOUBLE PRECISION NOT NULL, price DOUBLE PRECISION NOT NULL,
        commission DOUBLE PRECISION NOT NULL, slippage DOUBLE PRECISION NOT NULL,
        position_id TEXT NOT NULL, broker TEXT NOT NULL, executed_at TEXT NOT NULL, correlation_id TEXT)""",
    "CREATE INDEX IF NOT EXISTS trades_by_time ON trades (executed_at)",
    # opened_by: the opening fill (NULL while only a PositionClosed has been seen)
    """CREATE TABLE IF NOT EXISTS positions (
        position_id TEXT PRIMARY KEY, symbol TEXT NOT NULL, side TEXT NOT NULL,
        volume DOUBLE PRECISION NOT NULL, entry_price DOUBLE PRECISION NOT NULL, opened_at TEXT NOT NULL,
        opened_by TEXT, open_commission DOUBLE PRECISION NOT NULL, closed_volume DOUBLE PRECISION NOT NULL,
        exit_price DOUBLE PRECISION, closed_at TEXT, pnl DOUBLE PRECISION, close_reason TEXT)""",
    """CREATE TABLE IF NOT EXISTS trading_state (
        id INTEGER PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL, time TEXT NOT NULL,
        event_id TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS performance (
        id INTEGER PRIMARY KEY, time TEXT NOT NULL, equity DOUBLE PRECISION NOT NULL,
        realized_pnl DOUBLE PRECISION NOT NULL, unrealized_pnl DOUBLE PRECISION NOT NULL,
        trades INTEGER NOT NULL, metrics TEXT NOT NULL, event_id TEXT NOT NULL)""",
)
#: every table, in the order a rebuild drops them (``projection_meta`` is dropped with them)
TABLES = ("prices", "orders", "trades", "positions", "trading_state", "performance", "inbox", "outbox",
          "projection_positions")


def _upsert(table: str, key: str, columns: Sequence[str], updates: str) -> str:
    """INSERT of one row, or ``updates`` (``DO UPDATE SET ...``) when ``key`` exists."""
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({key}) DO {updates}")


def _set_if(condition: str, table: str, columns: Sequence[str]) -> str:
    """``SET`` assignments taking each column from the new row where ``condition`` holds (SET
    right-hand sides all see the old row, so one condition serves every column)."""
    return ", ".join(f"{c} = CASE WHEN {condition} THEN excluded.{c} ELSE {table}.{c} END" for c in columns)


def _latest_wins(table: str, columns: Sequence[str], key: str = "id") -> str:
    """An upsert keeping the row of the greatest (time, event_id): order-independent."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return _upsert(table, key, columns, f"UPDATE SET {updates} "
                   f"WHERE (excluded.time, excluded.event_id) > ({table}.time, {table}.event_id)")


_ORDER_STATUS = ("status", "status_rank", "status_at", "status_event_id", "detail")
_LATER_STATUS = ("(excluded.status_at, excluded.status_rank, excluded.status_event_id) "
                 "> (orders.status_at, orders.status_rank, orders.status_event_id)")
_ORDER_MERGE = (f"{_set_if(_LATER_STATUS, 'orders', _ORDER_STATUS)}, "
                "updated_at = CASE WHEN excluded.updated_at > orders.updated_at THEN excluded.updated_at "
                "ELSE orders.updated_at END")
_PLACED_FIELDS = ("symbol", "side", "volume", "order_type", "reason", "position_id", "placed_at")
ORDER_PLACED = _upsert(
    "orders", "order_id", ("order_id", *_PLACED_FIELDS, *_ORDER_STATUS, "updated_at"),
    "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _PLACED_FIELDS) + ", " + _ORDER_MERGE)
ORDER_FILLED = _upsert(
    "orders", "order_id", ("order_id", "symbol", "side", "volume", "fill_price", *_ORDER_STATUS, "updated_at"),
    # the placement's symbol, side and volume win; the fill's stand in until it is seen
    "UPDATE SET symbol = COALESCE(orders.symbol, excluded.symbol), side = COALESCE(orders.side, excluded.side), "
    "volume = COALESCE(orders.volume, excluded.volume), fill_price = excluded.fill_price, " + _ORDER_MERGE)
ORDER_ENDED = _upsert(  # rejected or cancelled
    "orders", "order_id", ("order_id", "symbol", *_ORDER_STATUS, "updated_at"),
    "UPDATE SET symbol = COALESCE(orders.symbol, excluded.symbol), " + _ORDER_MERGE)
TRADE = ("INSERT INTO trades (trade_id, order_id, symbol, side, volume, price, commission, slippage, position_id, "
         "broker, executed_at, correlation_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
         "ON CONFLICT (trade_id) DO NOTHING")
_OPENING = ("symbol", "side", "volume", "entry_price", "opened_at", "opened_by", "open_commission")
POSITION_OPENED = _upsert(
    "positions", "position_id", ("position_id", *_OPENING, "closed_volume"),
    "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _OPENING) + " WHERE positions.opened_by IS NULL")
_LATER_CLOSE = "positions.closed_at IS NULL OR excluded.closed_at >= positions.closed_at"
POSITION_CLOSED = _upsert(
    "positions", "position_id",
    ("position_id", "symbol", "side", "volume", "entry_price", "opened_at", "open_commission", "closed_volume",
     "exit_price", "closed_at", "pnl", "close_reason"),
    "UPDATE SET closed_volume = positions.closed_volume + excluded.closed_volume, "
    "pnl = COALESCE(positions.pnl, 0) + excluded.pnl, "
    + _set_if(_LATER_CLOSE, "positions", ("exit_price", "closed_at", "close_reason")))
PRICE = _latest_wins("prices", ("symbol", "bid", "ask", "time", "event_id"), key="symbol")
TRADING_STATE = _latest_wins("trading_state", ("id", "state", "reason", "time", "event_id"))
PERFORMANCE_ROW = _latest_wins(
    "performance", ("id", "time", "equity", "realized_pnl", "unrealized_pnl", "trades", "metrics", "event_id"))
INBOX = "INSERT INTO inbox (event_id, event_type) VALUES (%s, %s)"
OUTBOX = "INSERT INTO outbox (trade_id) VALUES (%s) ON CONFLICT (trade_id) DO NOTHING"
POSITION = _upsert("projection_positions", "topic, partition_no", ("topic", "partition_no", "next_offset"),
                   "UPDATE SET next_offset = excluded.next_offset")

_metrics_encode = msgspec.json.Encoder(order="sorted").encode  # sorted: the same text live and rebuilt
_metrics_decode = msgspec.json.Decoder(dict[str, float | None]).decode
_UPDATES_METADATA = Metadata(version=DatabaseUpdated.schema_version, producer=PRODUCER)
_parse = datetime.fromisoformat


def _when(at: str | None) -> datetime | None:
    return None if at is None else _parse(at)


@dataclass(frozen=True)
class AppliedBatch:
    applied: int  # events that changed the projections (or, ticks, could have)
    duplicates: int  # events skipped: their eventId was already applied
    fills: int  # newly applied OrderExecuted


class _Writes:
    """The statements of one batch, grouped by SQL so each runs as one ``executemany``; every
    merge is order-independent, so the grouping changes no result."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple]] = {}
        self.prices: dict[str, MarketDataReceived] = {}  # symbol -> the batch's latest tick

    def add(self, sql: str, row: tuple) -> None:
        rows = self.rows.get(sql)
        if rows is None:
            self.rows[sql] = [row]
        else:
            rows.append(row)

    def price(self, tick: MarketDataReceived) -> None:
        if not tick.symbol:  # a price of nothing: skipped, rather than a batch the NOT NULL key refuses forever
            return
        # compared as the stored row is (iso time is fixed-width UTC, UUID text orders like the
        # UUID); the row is formatted only for the batch's latest tick
        kept = self.prices.get(tick.symbol)
        if kept is None or (tick.data.timestamp, tick.event_id) > (kept.data.timestamp, kept.event_id):
            self.prices[tick.symbol] = tick

    def flush(self, tx: Transaction) -> None:
        if self.prices:
            self.add_all(PRICE, ((t.symbol, t.data.bid, t.data.ask, iso(t.data.timestamp), str(t.event_id))
                                 for t in self.prices.values()))
        for sql, rows in self.rows.items():
            tx.executemany(sql, rows)

    def add_all(self, sql: str, rows: Iterable[tuple]) -> None:
        self.rows.setdefault(sql, []).extend(rows)


def _status(event: Event, status: str, detail: str = "") -> tuple:
    at = iso(event.timestamp)
    return status, STATUS_RANK[status], at, str(event.event_id), detail, at


def _on_placed(e: OrderPlaced, w: _Writes) -> None:
    w.add(ORDER_PLACED, (e.order_id, e.symbol, e.side, e.volume, e.order_type, e.reason, e.position_id,
                         iso(e.timestamp), *_status(e, "PLACED")))


def _on_executed(e: OrderExecuted, w: _Writes) -> None:
    at, trade_id = iso(e.timestamp), str(e.event_id)
    w.add(ORDER_FILLED, (e.order_id, e.symbol, e.side, e.volume, e.price, *_status(e, "FILLED")))
    w.add(TRADE, (trade_id, e.order_id, e.symbol or "", e.side, e.volume, e.price, e.commission, e.slippage,
                  e.position_id, e.broker, at, None if e.correlation_id is None else str(e.correlation_id)))
    if e.position_id and e.position_id == e.order_id:  # the order that opens its position
        w.add(POSITION_OPENED, (e.position_id, e.symbol or "", e.side, e.volume, e.price, at, trade_id,
                                e.commission, 0.0))


def _on_rejected(e: OrderRejected, w: _Writes) -> None:
    w.add(ORDER_ENDED, (e.order_id, e.symbol, *_status(e, "REJECTED", e.reason)))


def _on_cancelled(e: OrderCancelled, w: _Writes) -> None:
    w.add(ORDER_ENDED, (e.order_id, e.symbol, *_status(e, "CANCELLED", e.reason)))


def _on_closed(e: PositionClosed, w: _Writes) -> None:
    at = iso(e.timestamp)
    w.add(POSITION_CLOSED, (e.position_id, e.symbol or "", e.side, e.volume, e.entry_price,
                            iso(e.opened_at) if e.opened_at is not None else at, 0.0, e.volume,
                            e.exit_price, at, e.pnl, e.reason))


def _on_performance(e: PerformanceCalculated, w: _Writes) -> None:
    w.add(PERFORMANCE_ROW, (1, iso(e.timestamp), e.equity, e.realized_pnl, e.unrealized_pnl, e.trades,
                            _metrics_encode(e.metrics).decode(), str(e.event_id)))


def _on_trading_state(e: TradingStateChanged, w: _Writes) -> None:
    w.add(TRADING_STATE, (1, e.state, e.reason, iso(e.timestamp), str(e.event_id)))


_HANDLERS: dict[type, Callable[[Any, _Writes], None]] = {
    OrderPlaced: _on_placed, OrderExecuted: _on_executed, OrderRejected: _on_rejected,
    OrderCancelled: _on_cancelled, PositionClosed: _on_closed, PerformanceCalculated: _on_performance,
    TradingStateChanged: _on_trading_state,
}
#: the event types the projections apply (by name: the record's type header skips the rest undecoded)
HANDLED = frozenset({MarketDataReceived.__name__, *(cls.__name__ for cls in _HANDLERS)})


def _unrealized(side: str, entry: float, volume: float, closed_volume: float, open_commission: float,
                price: tuple[float, float] | None) -> float:
    """PnL of a position's open units at the latest (bid, ask) (a long exits at the bid, a
    short at the ask; no move before any price), less their share of the opening commission."""
    units = volume - closed_volume
    commission = open_commission * units / volume
    if price is None:
        return -commission
    bid, ask = price
    return ((bid - entry) if side == "BUY" else (entry - ask)) * units - commission


class ReadStore:
    """The projections in one database (implements :class:`~tradepipe.read.model.ReadModel`)."""

    def __init__(self, db: Database, *, initial_equity: float = 100_000.0) -> None:
        self.db = db
        self.initial_equity = initial_equity
        db.atomic(self._create)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def _create(self, tx: Transaction) -> None:
        for ddl in _SCHEMA:
            tx.execute(ddl)
        row = tx.one("SELECT value FROM projection_meta WHERE key = 'schema_version'")
        if row is None:
            tx.execute("INSERT INTO projection_meta (key, value) VALUES ('schema_version', %s)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise StoreError(
                f"read store {redacted(self.db.url)} has projection schema version {row[0]}, this tradepipe writes "
                f"{SCHEMA_VERSION}: rebuild it (tradepipe projections rebuild)")

    def reset(self) -> None:
        """Drop every table and create them empty (a rebuild starts here)."""
        def drop_and_create(tx: Transaction) -> None:
            for table in (*TABLES, "projection_meta"):
                tx.execute(f"DROP TABLE IF EXISTS {table}")
            self._create(tx)
        self.db.atomic(drop_and_create)

    # -- writing ----------------------------------------------------------------------------
    def apply(self, events: Sequence[Event], offsets: Mapping[TopicPartition, int], *,
              record_updates: bool = True) -> AppliedBatch:
        """Apply ``events`` (one polled batch, in log order) and store ``offsets`` (the next
        offset per partition after it), in one transaction. ``record_updates``: put each new
        fill in the outbox, for :meth:`pending_updates`."""
        def work(tx: Transaction) -> AppliedBatch:
            fresh, duplicates = self._unseen(tx, events)
            writes = _Writes()
            inbox: list[tuple[str, str]] = []
            fills: list[tuple[str]] = []
            for event in fresh:
                cls = type(event)
                if cls is MarketDataReceived:
                    writes.price(event)
                    continue
                _HANDLERS[cls](event, writes)
                inbox.append((str(event.event_id), cls.__name__))
                if cls is OrderExecuted:
                    fills.append((str(event.event_id),))
            writes.flush(tx)
            tx.executemany(INBOX, inbox)
            if record_updates:
                tx.executemany(OUTBOX, fills)
            tx.executemany(POSITION, [(tp.topic, tp.partition, offset) for tp, offset in offsets.items()])
            return AppliedBatch(len(fresh), duplicates, len(fills))
        return self.db.atomic(work)

    @staticmethod
    def _unseen(tx: Transaction, events: Sequence[Event]) -> tuple[list[Event], int]:
        """``events`` without those already in the inbox or earlier in the batch (ticks pass:
        re-applying one is harmless)."""
        ids = list({str(e.event_id) for e in events if type(e) is not MarketDataReceived})
        seen: set[str] = set()
        for i in range(0, len(ids), INBOX_CHUNK):
            chunk = ids[i:i + INBOX_CHUNK]
            placeholders = ", ".join(["%s"] * len(chunk))
            seen.update(r[0] for r in tx.all(f"SELECT event_id FROM inbox WHERE event_id IN ({placeholders})", chunk))
        fresh: list[Event] = []
        for event in events:
            if type(event) is not MarketDataReceived:
                event_id = str(event.event_id)
                if event_id in seen:
                    continue
                seen.add(event_id)
            fresh.append(event)
        return fresh, len(events) - len(fresh)

    def pending_updates(self) -> list[DatabaseUpdated]:
        """The DatabaseUpdated of every fill in the outbox (applied, not yet published)."""
        rows = self.db.query(
            "SELECT t.trade_id, t.order_id, t.symbol, t.correlation_id, t.executed_at FROM outbox o "
            "JOIN trades t ON t.trade_id = o.trade_id ORDER BY t.executed_at, t.trade_id")
        return [self._database_updated(*row) for row in rows]

    def _database_updated(self, trade_id: str, order_id: str, symbol: str, correlation_id: str | None,
                          executed_at: str) -> DatabaseUpdated:
        fill_id = uuid.UUID(trade_id)
        at = _parse(executed_at)
        return DatabaseUpdated(
            # the first output a Context("projections") would give the fill: one id per fill, forever
            event_id=derived_event_id(fill_id.bytes + PRODUCER.encode(), 0, at), timestamp=at,
            correlation_id=None if correlation_id is None else uuid.UUID(correlation_id), causation_id=fill_id,
            symbol=symbol or None, metadata=_UPDATES_METADATA, store=self.dialect, table="trades",
            record_id=order_id)

    def published(self, updates: Iterable[DatabaseUpdated]) -> None:
        """Remove published updates from the outbox."""
        rows = [(str(u.causation_id),) for u in updates]
        self.db.atomic(lambda tx: tx.executemany("DELETE FROM outbox WHERE trade_id = %s", rows))

    # -- bookkeeping ------------------------------------------------------------------------
    def offsets(self) -> dict[TopicPartition, int]:
        """The next offset to apply per partition."""
        rows = self.db.query("SELECT topic, partition_no, next_offset FROM projection_positions")
        return {TopicPartition(t, p): o for t, p, o in rows}

    def row_counts(self) -> dict[str, int]:
        def count(tx: Transaction) -> dict[str, int]:
            return {table: tx.one(f"SELECT count(*) FROM {table}")[0] for table in TABLES}
        return self.db.atomic(count, write=False)

    def close(self) -> None:
        self.db.close()

    # -- ReadModel ----------------------------------------------------------------------------
    def prices(self) -> list[PriceView]:
        return [self._price(*row) for row in self.db.query("SELECT symbol, bid, ask, time FROM prices ORDER BY symbol")]

    def price(self, symbol: str) -> PriceView | None:
        rows = self.db.query("SELECT symbol, bid, ask, time FROM prices WHERE symbol = %s", (symbol,))
        return self._price(*rows[0]) if rows else None

    @staticmethod
    def _price(symbol: str, bid: float, ask: float, time: str) -> PriceView:
        return PriceView(symbol=symbol, bid=bid, ask=ask, mid=(bid + ask) / 2, time=_parse(time))

    _POSITION_COLUMNS = ("position_id, symbol, side, volume, entry_price, opened_at, open_commission, closed_volume, "
                         "exit_price, closed_at, pnl, close_reason")

    def positions(self, *, open_only: bool = True) -> list[PositionView]:
        where = "WHERE closed_volume < volume * %s " if open_only else ""
        def read(tx: Transaction) -> tuple[list[tuple], dict[str, tuple[float, float]]]:
            rows = tx.all(f"SELECT {self._POSITION_COLUMNS} FROM positions {where}ORDER BY opened_at, position_id",
                          (CLOSED_SHARE,) if open_only else ())
            return rows, self._marks(tx)
        rows, marks = self.db.atomic(read, write=False)
        return [self._position(row, marks) for row in rows]

    @staticmethod
    def _marks(tx: Transaction) -> dict[str, tuple[float, float]]:
        return {symbol: (bid, ask) for symbol, bid, ask in tx.all("SELECT symbol, bid, ask FROM prices")}

    @staticmethod
    def _position(row: tuple, marks: Mapping[str, tuple[float, float]]) -> PositionView:
        (position_id, symbol, side, volume, entry, opened_at, open_commission, closed_volume,
         exit_price, closed_at, pnl, close_reason) = row
        closed = closed_volume >= volume * CLOSED_SHARE
        return PositionView(
            position_id=position_id, symbol=symbol, side=side, volume=volume, entry_price=entry,
            opened_at=_parse(opened_at), status="CLOSED" if closed else "OPEN", exit_price=exit_price,
            closed_at=_when(closed_at), pnl=pnl, close_reason=close_reason,
            unrealized_pnl=None if closed else _unrealized(side, entry, volume, closed_volume, open_commission,
                                                           marks.get(symbol)))

    def portfolio(self) -> PortfolioView:
        def read(tx: Transaction) -> tuple:
            positions = tx.all("SELECT side, symbol, volume, entry_price, open_commission, closed_volume, pnl "
                               "FROM positions ORDER BY position_id")
            trades = tx.one("SELECT count(*), max(executed_at) FROM trades")
            state = tx.one("SELECT state, reason FROM trading_state WHERE id = 1")
            return positions, self._marks(tx), trades, state
        positions, marks, (trades, last_trade_at), state = self.db.atomic(read, write=False)
        realized = unrealized = 0.0
        open_count = closed_count = 0
        for side, symbol, volume, entry, open_commission, closed_volume, pnl in positions:
            realized += pnl or 0.0
            if closed_volume >= volume * CLOSED_SHARE:
                closed_count += 1
            else:
                open_count += 1
                unrealized += _unrealized(side, entry, volume, closed_volume, open_commission, marks.get(symbol))
        state_name, state_reason = state or ("ACTIVE", "")
        return PortfolioView(
            initial_equity=self.initial_equity, realized_pnl=realized, unrealized_pnl=unrealized,
            equity=self.initial_equity + realized + unrealized, open_positions=open_count,
            closed_positions=closed_count, trades=trades, last_trade_at=_when(last_trade_at),
            trading_state=state_name, trading_state_reason=state_reason)

    def trades(self, *, symbol: str | None = None, limit: int = 100) -> list[TradeView]:
        where, params = ("WHERE symbol = %s ", [symbol]) if symbol else ("", [])
        rows = self.db.query(
            "SELECT trade_id, order_id, symbol, side, volume, price, commission, slippage, position_id, broker, "
            f"executed_at FROM trades {where}ORDER BY executed_at DESC, trade_id DESC LIMIT %s", (*params, limit))
        return [TradeView(trade_id=r[0], order_id=r[1], symbol=r[2], side=r[3], volume=r[4], price=r[5],
                          commission=r[6], slippage=r[7], position_id=r[8], broker=r[9], executed_at=_parse(r[10]))
                for r in rows]

    _ORDER_COLUMNS = ("order_id, symbol, side, volume, order_type, reason, status, placed_at, updated_at, "
                      "fill_price, detail")

    def orders(self, *, symbol: str | None = None, limit: int = 100) -> list[OrderView]:
        """Placed orders, latest first (an order refused before placement, by the risk checks,
        was never an order: it is only an OrderRejected event)."""
        where, params = ("AND symbol = %s ", [symbol]) if symbol else ("", [])
        rows = self.db.query(
            f"SELECT {self._ORDER_COLUMNS} FROM orders WHERE placed_at IS NOT NULL {where}"
            "ORDER BY placed_at DESC, order_id DESC LIMIT %s", (*params, limit))
        return [self._order(*row) for row in rows]

    def order(self, order_id: str) -> OrderView | None:
        rows = self.db.query(
            f"SELECT {self._ORDER_COLUMNS} FROM orders WHERE order_id = %s AND placed_at IS NOT NULL", (order_id,))
        return self._order(*rows[0]) if rows else None

    @staticmethod
    def _order(order_id, symbol, side, volume, order_type, reason, status, placed_at, updated_at, fill_price,
               detail) -> OrderView:
        return OrderView(order_id=order_id, symbol=symbol, side=side, volume=volume, order_type=order_type,
                         reason=reason, status=status, placed_at=_parse(placed_at), updated_at=_parse(updated_at),
                         fill_price=fill_price, detail=detail)

    def performance(self) -> PerformanceView | None:
        rows = self.db.query(
            "SELECT time, equity, realized_pnl, unrealized_pnl, trades, metrics FROM performance WHERE id = 1")
        if not rows:
            return None
        time, equity, realized, unrealized, trades, metrics = rows[0]
        return PerformanceView(time=_parse(time), equity=equity, realized_pnl=realized, unrealized_pnl=unrealized,
                               trades=trades, metrics=_metrics_decode(metrics))


def open_read_store(url: str, *, initial_equity: float = 100_000.0, reconnect_timeout_s: float = 60.0) -> ReadStore:
    """The projections at ``url`` (``sqlite:///file.db`` or ``postgresql://...``), tables
    created if missing; a :class:`~tradepipe.read.sql.StoreError` naming the URL if it is bad,
    unreachable, or holds projections of another schema version."""
    return ReadStore(open_database(url, reconnect_timeout_s=reconnect_timeout_s), initial_equity=initial_equity)


# --- following the bus ---------------------------------------------------------------------------

@dataclass
class ProjectionStats:
    records: int = 0  # records read
    applied: int = 0  # events applied
    skipped: int = 0  # records of other event types, or that did not decode
    duplicates: int = 0  # events whose eventId was already applied
    batches: int = 0  # transactions committed
    published: int = 0  # DatabaseUpdated sent (repeats after a crash included)


class ProjectionRunner:
    """Applies the bus's events to a :class:`ReadStore`, exactly once (see the module docstring).

    ``publish_updates``: write fills to the outbox and publish their DatabaseUpdated (a live
    projector); a rebuild re-applies history and announces nothing.
    """

    def __init__(self, bus: Bus, store: ReadStore, *, codec: Codec | None = None, batch_size: int = 1000,
                 publish_updates: bool = True, poll_timeout_s: float = 0.2) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.bus = bus
        self.store = store
        self.codec = codec or JsonCodec()
        self.batch_size = batch_size
        self.publish_updates = publish_updates
        self.poll_timeout_s = poll_timeout_s
        self.stats = ProjectionStats()
        self._consumer = bus.consumer(None)
        self._producer = bus.producer() if publish_updates else None
        self._topics: tuple[str, ...] = ()
        self._next: dict[TopicPartition, int] = {}  # as committed in the store
        self._outbox_pending = publish_updates  # at start: whatever a crashed predecessor left

    def _follow_topics(self) -> None:
        """Assign every partition of the wanted topics that exist (until all of them do), from
        the store's positions."""
        if len(self._topics) == len(TOPICS):
            return
        existing = self.bus.topics()
        topics = tuple(t for t in TOPICS if t in existing)
        if topics != self._topics:
            stored = self.store.offsets()
            partitions = self.bus.partitions_of(topics)
            self._next = {tp: self._next.get(tp, stored.get(tp, 0)) for tp in partitions}
            self._consumer.assign(partitions)
            self._rewind()
            self._topics = topics

    def _rewind(self) -> None:
        """Read again from the committed positions (after a batch that did not commit)."""
        for tp, offset in self._next.items():
            self._consumer.seek(tp, offset)

    def step(self, timeout_s: float = 0.0) -> int:
        """Poll one batch (waiting up to ``timeout_s`` for one) and apply it; returns the events applied."""
        self._follow_topics()
        if self._outbox_pending:
            self._publish_updates()
        records = self._consumer.poll(self.batch_size, timeout_s=timeout_s)
        if not records:
            return 0
        events = self._decode(records)
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            offsets[record.tp] = record.offset + 1
        try:
            result = self.store.apply(events, offsets, record_updates=self.publish_updates)
        except BaseException:
            self._rewind()
            raise
        self._next.update(offsets)
        stats = self.stats
        stats.records += len(records)
        stats.skipped += len(records) - len(events)
        stats.applied += result.applied
        stats.duplicates += result.duplicates
        stats.batches += 1
        if result.fills and self.publish_updates:
            self._outbox_pending = True
            self._publish_updates()
        return result.applied

    def _decode(self, records: Sequence[Record]) -> list[Event]:
        """The events of ``records`` the projections apply; the type header skips the others
        without decoding them (most of market data's records are ticks, which are decoded)."""
        decode = self.codec.decode
        events: list[Event] = []
        for record in records:
            headers = dict(record.headers)
            name = headers.get(TYPE_HEADER)
            if name is not None and name.decode() not in HANDLED:
                continue
            try:
                event = decode(record.value)
            except DecodeError as exc:  # the services dead-letter it; the projections pass it by
                log.warning("projections: %s/%d@%d does not decode: %s", record.topic, record.partition,
                            record.offset, exc.reason)
                continue
            if type(event).__name__ in HANDLED:
                events.append(event)
        return events

    def _publish_updates(self) -> None:
        """Publish the outbox's DatabaseUpdated, then empty it (a failure leaves it for the next step)."""
        updates = self.store.pending_updates()
        if updates:
            publish(self._producer, self.codec, updates)
            self._producer.flush()
            self.store.published(updates)
            self.stats.published += len(updates)
        self._outbox_pending = False

    def lag(self) -> int:
        """Records on the bus not applied yet."""
        self._follow_topics()
        behind = 0
        for topic in self._topics:
            for partition, end in self.bus.end_offsets(topic).items():
                behind += max(end - self._next.get(TopicPartition(topic, partition), 0), 0)
        return behind

    def caught_up(self) -> bool:
        return self.lag() == 0

    def run(self, stop: threading.Event) -> None:
        """Follow the bus until ``stop`` is set. A store or broker away longer than its retries
        is logged and waited for: nothing is lost, the batch is read again."""
        while not stop.is_set():
            try:
                self.step(self.poll_timeout_s)
            except (StoreUnavailableError, BusError) as exc:
                log.error("projections: %s; retrying in 1 s", exc)
                stop.wait(1.0)

    def close(self) -> None:
        self._consumer.close()
        if self._producer is not None:
            self._producer.close()

    def __enter__(self) -> ProjectionRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rebuild(bus: Bus, store: ReadStore, *, codec: Codec | None = None, batch_size: int = 1000,
            on_progress: Callable[[int, int], None] | None = None) -> ProjectionStats:
    """Drop the projections and apply every event on the bus again; ``on_progress(done,
    total)`` after each batch, in records. Returns the counts."""
    store.reset()
    with ProjectionRunner(bus, store, codec=codec, batch_size=batch_size, publish_updates=False) as runner:
        total = runner.lag()
        while True:
            runner.step(timeout_s=0.1)
            behind = runner.lag()
            if on_progress is not None:
                total = max(total, runner.stats.records + behind)  # the bus may grow meanwhile
                on_progress(runner.stats.records, total)
            if behind == 0:
                return runner.stats
