"""The analytics projection (R8.1): ticks, bars, features, predictions, signals and order
events in ClickHouse tables, and the queries over them (:class:`AnalyticsQueries`).

:class:`AnalyticsStore` owns every statement; it runs on either backend of
:mod:`tradepipe.read.clickhouse` (chDB embedded, or a server through clickhouse-connect) with
the same SQL text. Tables (``<database>.<name>``), one row per event:

- ``ticks`` (MarketDataReceived), ``bars`` (BarClosed), ``features`` (FeaturesCalculated),
  ``predictions`` (PredictionGenerated), ``signals`` (TradingSignalGenerated and the
  validator's SignalValidated / SignalRejected), ``orders`` (OrderPlaced, OrderExecuted,
  OrderRejected, OrderCancelled, and PositionClosed with its realized pnl);
- every one ``ReplacingMergeTree``, ``PARTITION BY (toYYYYMM(ts), symbol)``, ``ORDER BY
  (symbol, ts, event_id)``. Why replacing: the projector records its positions after the
  insert, so a crash between the two inserts the batch again on restart. An event always has
  the same (symbol, ts, event_id), so its copies collapse into one row, and the queries read
  ``FINAL`` so they never count a copy a background merge has not removed yet;
- ``positions``: the projector's next offset per partition (``ReplacingMergeTree(version)``:
  the latest write wins, also when a rebuild moves positions back).

:class:`AnalyticsProjector` fills the tables from the bus: it reads every partition of the
topics above from the positions kept in the store (no consumer group), inserts a batch per
table, then records the positions. :func:`rebuild_analytics` empties the store and replays the
bus from the beginning.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import msgspec

from tradepipe.bus.base import Bus, Consumer, Record, TopicPartition
from tradepipe.config import ModelSettings
from tradepipe.events.codec import Codec, DecodeError, JsonCodec
from tradepipe.events.envelope import Event
from tradepipe.events.types import (
    FEATURES, MARKET_DATA, ORDERS, PREDICTIONS, SIGNALS, VALIDATED, BarClosed, FeaturesCalculated,
    MarketDataReceived, OrderCancelled, OrderExecuted, OrderPlaced, OrderRejected, PositionClosed,
    PredictionGenerated, SignalRejected, SignalValidated, TradingSignalGenerated,
)
from tradepipe.models.scoring import horizon_ms
from tradepipe.read.clickhouse import DEFAULT_DATABASE, ClickHouseBackend, backend_from_url
from tradepipe.read.model import Candle, DailyPnl, HourlyHitRate, PredictionView
from tradepipe.sources.files import timeframe_ms

log = logging.getLogger(__name__)

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TOPICS = (MARKET_DATA, FEATURES, PREDICTIONS, SIGNALS, VALIDATED, ORDERS)
PROJECTOR = "analytics"  # the projector's name in the positions table
#: the pipeline's dead band (scoring of predictions): ModelSettings.dead_band_bps in return units,
#: computed as the analytics service computes it
DEFAULT_DEAD_BAND = ModelSettings().dead_band_bps * 1e-4
TIME = "DateTime64(6, 'UTC')"
#: what every query ends with: times as ISO-8601 (msgspec reads them back as aware UTC), 64-bit
#: integers as numbers, rows as JSON lines
QUERY_FORMAT = "SETTINGS date_time_output_format = 'iso', output_format_json_quote_64bit_integers = 0 FORMAT JSONEachRow"


# --- rows: one struct per table, its fields the table's columns in order ---------------------

class Row(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A table row; encoded as a JSON array in column order (``JSONCompactEachRow``)."""

    table: ClassVar[str]


class TickRow(Row, frozen=True):
    table = "ticks"
    event_id: uuid.UUID
    ts: datetime  # the tick's time
    symbol: str
    bid: float
    ask: float
    volume: float
    source: str
    seq: int  # the record's offset (one symbol is on one partition): orders ticks within a millisecond


class BarRow(Row, frozen=True):
    table = "bars"
    event_id: uuid.UUID
    ts: datetime
    symbol: str
    timeframe: str
    bar_time: datetime
    bid_open: float
    bid_high: float
    bid_low: float
    bid_close: float
    ask_open: float
    ask_high: float
    ask_low: float
    ask_close: float
    mid_open: float
    mid_high: float
    mid_low: float
    mid_close: float
    tick_count: int
    spread_mean: float
    spread_max: float


class FeatureRow(Row, frozen=True):
    table = "features"
    event_id: uuid.UUID
    ts: datetime
    symbol: str
    timeframe: str
    bar_time: datetime | None
    feature_group: str
    features: dict[str, float | None]
    producer: str


class PredictionRow(Row, frozen=True):
    table = "predictions"
    event_id: uuid.UUID
    ts: datetime
    symbol: str
    timeframe: str
    bar_time: datetime | None
    model: str
    producer: str
    direction: str
    confidence: float
    price: float | None  # mid close of the bar predicted from
    target_price: float | None
    stop_loss: float | None
    time_horizon: str
    horizon_ms: int | None  # time_horizon parsed as the pipeline parses it; None: never scored
    fallback: bool
    correlation_id: uuid.UUID | None


class SignalRow(Row, frozen=True):
    table = "signals"
    event_id: uuid.UUID
    ts: datetime
    symbol: str
    type: str  # TradingSignalGenerated | SignalValidated | SignalRejected
    signal_id: uuid.UUID  # the signal's eventId (its own, or the one a verdict is about)
    direction: str
    confidence: float
    timeframe: str
    bar_time: datetime | None
    price: float | None
    target_price: float | None
    stop_loss: float | None
    producer: str
    models: list[str]  # a signal's contributors
    failed_rules: list[str]  # a verdict's rules that did not pass
    correlation_id: uuid.UUID | None


class OrderRow(Row, frozen=True):
    table = "orders"
    event_id: uuid.UUID
    ts: datetime
    symbol: str
    type: str  # OrderPlaced | OrderExecuted | OrderRejected | OrderCancelled | PositionClosed
    order_id: str
    position_id: str
    side: str  # '' for a rejection or cancellation
    volume: float | None
    price: float | None  # placed: the limit/stop price; executed: the fill; closed: the exit
    order_type: str
    reason: str  # why it was placed, rejected, cancelled or closed
    broker: str
    commission: float
    slippage: float
    entry_price: float | None
    pnl: float | None  # PositionClosed: realized, after both legs' commissions
    opened_at: datetime | None
    correlation_id: uuid.UUID | None


ROWS: tuple[type[Row], ...] = (TickRow, BarRow, FeatureRow, PredictionRow, SignalRow, OrderRow)
_LC = "LowCardinality(String)"
#: the column types of each table, in the order of its row's fields
COLUMN_TYPES: dict[str, tuple[str, ...]] = {
    "ticks": ("UUID", TIME, _LC, "Float64", "Float64", "Float64", _LC, "UInt64"),
    "bars": ("UUID", TIME, _LC, _LC, TIME) + ("Float64",) * 12 + ("UInt32", "Float64", "Float64"),
    "features": ("UUID", TIME, _LC, _LC, f"Nullable({TIME})", _LC, "Map(String, Nullable(Float64))", _LC),
    "predictions": ("UUID", TIME, _LC, _LC, f"Nullable({TIME})", _LC, _LC, _LC, "Float64", "Nullable(Float64)",
                    "Nullable(Float64)", "Nullable(Float64)", _LC, "Nullable(UInt64)", "Bool", "Nullable(UUID)"),
    "signals": ("UUID", TIME, _LC, _LC, "UUID", _LC, "Float64", _LC, f"Nullable({TIME})", "Nullable(Float64)",
                "Nullable(Float64)", "Nullable(Float64)", _LC, "Array(String)", "Array(String)", "Nullable(UUID)"),
    "orders": ("UUID", TIME, _LC, _LC, "String", "String", _LC, "Nullable(Float64)", "Nullable(Float64)", _LC,
               "String", _LC, "Float64", "Float64", "Nullable(Float64)", "Nullable(Float64)", f"Nullable({TIME})",
               "Nullable(UUID)"),
}


def _columns(row: type[Row]) -> str:
    return ", ".join(row.__struct_fields__)


def _ddl(db: str, row: type[Row]) -> str:
    types = COLUMN_TYPES[row.table]
    columns = ",\n    ".join(f"{name} {kind}" for name, kind in zip(row.__struct_fields__, types, strict=True))
    return (f"CREATE TABLE IF NOT EXISTS {db}.{row.table} (\n    {columns}\n)\n"
            "ENGINE = ReplacingMergeTree\nPARTITION BY (toYYYYMM(ts), symbol)\nORDER BY (symbol, ts, event_id)")


# --- events to rows ---------------------------------------------------------------------------

def _tick(e: MarketDataReceived, record: Record) -> TickRow:
    d = e.data
    return TickRow(e.event_id, d.timestamp, e.symbol or "", d.bid, d.ask, d.volume, e.source, record.offset)


def _bar(e: BarClosed, record: Record) -> BarRow:
    b, a, m = e.bid, e.ask, e.mid
    return BarRow(e.event_id, e.timestamp, e.symbol or "", e.timeframe, e.bar_time,
                  b.open, b.high, b.low, b.close, a.open, a.high, a.low, a.close, m.open, m.high, m.low, m.close,
                  e.tick_count, e.spread_mean, e.spread_max)


def _features(e: FeaturesCalculated, record: Record) -> FeatureRow:
    return FeatureRow(e.event_id, e.timestamp, e.symbol or "", e.timeframe, e.bar_time, e.group, e.features,
                      e.metadata.producer)


def _prediction(e: PredictionGenerated, record: Record) -> PredictionRow:
    p = e.prediction
    return PredictionRow(e.event_id, e.timestamp, e.symbol or "", e.timeframe, e.bar_time, e.model.name,
                         e.metadata.producer, p.direction, p.confidence, e.price, p.target_price, p.stop_loss,
                         p.time_horizon, horizon_ms(p.time_horizon), e.fallback, e.correlation_id)


def _signal(e: TradingSignalGenerated, record: Record) -> SignalRow:
    return SignalRow(e.event_id, e.timestamp, e.symbol or "", e.type, e.event_id, e.direction, e.confidence,
                     e.timeframe, e.bar_time, e.price, e.target_price, e.stop_loss, e.metadata.producer,
                     [c.model for c in e.contributors], [], e.correlation_id)


def _verdict(e: SignalValidated | SignalRejected, record: Record) -> SignalRow:
    return SignalRow(e.event_id, e.timestamp, e.symbol or "", e.type, e.signal_id, e.direction, e.confidence,
                     e.timeframe, e.bar_time, e.price, e.target_price, e.stop_loss, e.metadata.producer, [],
                     [v.rule for v in e.verdicts if not v.passed], e.correlation_id)


def _order_row(e: Event, *, order_id: str, position_id: str = "", side: str = "", volume: float | None = None,
               price: float | None = None, order_type: str = "", reason: str = "", broker: str = "",
               commission: float = 0.0, slippage: float = 0.0, entry_price: float | None = None,
               pnl: float | None = None, opened_at: datetime | None = None) -> OrderRow:
    return OrderRow(e.event_id, e.timestamp, e.symbol or "", e.type, order_id, position_id, side, volume, price,
                    order_type, reason, broker, commission, slippage, entry_price, pnl, opened_at, e.correlation_id)


def _placed(e: OrderPlaced, record: Record) -> OrderRow:
    return _order_row(e, order_id=e.order_id, position_id=e.position_id, side=e.side, volume=e.volume, price=e.price,
                      order_type=e.order_type, reason=e.reason, broker=e.broker)


def _executed(e: OrderExecuted, record: Record) -> OrderRow:
    return _order_row(e, order_id=e.order_id, position_id=e.position_id, side=e.side, volume=e.volume, price=e.price,
                      broker=e.broker, commission=e.commission, slippage=e.slippage)


def _rejected_or_cancelled(e: OrderRejected | OrderCancelled, record: Record) -> OrderRow:
    return _order_row(e, order_id=e.order_id, reason=e.reason)


def _closed(e: PositionClosed, record: Record) -> OrderRow:
    return _order_row(e, order_id=e.order_id, position_id=e.position_id, side=e.side, volume=e.volume,
                      price=e.exit_price, reason=e.reason, entry_price=e.entry_price, pnl=e.pnl, opened_at=e.opened_at)


#: the row of each projected event type; other events on the topics are skipped
ROW_OF: dict[type[Event], Callable[[Any, Record], Row]] = {
    MarketDataReceived: _tick, BarClosed: _bar, FeaturesCalculated: _features, PredictionGenerated: _prediction,
    TradingSignalGenerated: _signal, SignalValidated: _verdict, SignalRejected: _verdict,
    OrderPlaced: _placed, OrderExecuted: _executed, OrderRejected: _rejected_or_cancelled,
    OrderCancelled: _rejected_or_cancelled, PositionClosed: _closed,
}


# --- the store --------------------------------------------------------------------------------

class _Position(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    next_offset: int


class _Count(msgspec.Struct, frozen=True):
    n: int


def _utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive time is taken as UTC (event times are UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _text(at: datetime) -> str:
    """A query parameter of type DateTime64(6, 'UTC')."""
    return _utc(at).strftime("%Y-%m-%d %H:%M:%S.%f")


class AnalyticsStore:
    """The analytics tables in ``database`` on ``backend``, and the queries over them.

    ``dead_band`` (return units) is the band within which a move counts as HOLD when a
    prediction is scored: the pipeline's ``models.dead_band_bps`` by default."""

    def __init__(self, backend: ClickHouseBackend, database: str = DEFAULT_DATABASE, *,
                 dead_band: float = DEFAULT_DEAD_BAND) -> None:
        self.backend = backend
        self.database = database
        self.dead_band = dead_band
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[type, msgspec.json.Decoder] = {}
        self.create_tables()

    @property
    def url(self) -> str:
        return self.backend.url

    # -- schema ---------------------------------------------------------------------------
    def create_tables(self) -> None:
        db = self.database
        self.backend.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        for row in ROWS:
            self.backend.command(_ddl(db, row))
        self.backend.command(
            f"CREATE TABLE IF NOT EXISTS {db}.positions (\n    projector LowCardinality(String),\n    topic String,\n"
            "    partition UInt32,\n    next_offset UInt64,\n    version UInt64\n)\n"
            "ENGINE = ReplacingMergeTree(version)\nORDER BY (projector, topic, partition)")

    def reset(self) -> None:
        """Drop every table (rows and positions) and create them empty: before a rebuild."""
        for table in [row.table for row in ROWS] + ["positions"]:
            self.backend.command(f"DROP TABLE IF EXISTS {self.database}.{table}")
        self.create_tables()

    # -- writing --------------------------------------------------------------------------
    def insert(self, rows: Iterable[Row]) -> int:
        """Insert ``rows`` (any tables), one INSERT per table; returns the rows inserted."""
        by_table: dict[type[Row], list[Row]] = {}
        for row in rows:
            by_table.setdefault(type(row), []).append(row)
        for kind, batch in by_table.items():
            self.backend.insert(
                f"INSERT INTO {self.database}.{kind.table} ({_columns(kind)}) "
                "SETTINGS date_time_input_format = 'best_effort' FORMAT JSONCompactEachRow",
                self._encoder.encode_lines(batch))
        return sum(len(batch) for batch in by_table.values())

    def save_positions(self, projector: str, positions: Mapping[TopicPartition, int]) -> None:
        if not positions:
            return
        version = time.time_ns()  # later writes win, whatever the offsets
        self.backend.insert(
            f"INSERT INTO {self.database}.positions (projector, topic, partition, next_offset, version) "
            "FORMAT JSONCompactEachRow",
            self._encoder.encode_lines([[projector, tp.topic, tp.partition, offset, version]
                                        for tp, offset in positions.items()]))

    def load_positions(self, projector: str) -> dict[TopicPartition, int]:
        rows = self._query(_Position, f"SELECT topic, partition, next_offset FROM {self.database}.positions FINAL "
                                      "WHERE projector = {projector:String}", projector=projector)
        return {TopicPartition(r.topic, r.partition): r.next_offset for r in rows}

    # -- reading --------------------------------------------------------------------------
    def _query(self, kind: type, sql: str, **params: object) -> list:
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = msgspec.json.Decoder(kind)
        body = self.backend.query(f"{sql}\n{QUERY_FORMAT}", {k: str(v) for k, v in params.items()})
        return [decoder.decode(line) for line in body.splitlines() if line]

    def count(self, table: str) -> int:
        """Distinct events in ``table`` (copies inserted again after a crash count once)."""
        if table not in COLUMN_TYPES:
            raise ValueError(f"unknown analytics table {table!r}; one of {sorted(COLUMN_TYPES)}")
        [row] = self._query(_Count, f"SELECT count() AS n FROM {self.database}.{table} FINAL")
        return row.n

    def row_counts(self) -> dict[str, int]:
        """Distinct events per table."""
        return {row.table: self.count(row.table) for row in ROWS}

    def ohlc(self, symbol: str, timeframe: str, start: datetime | None = None, end: datetime | None = None,
             limit: int = 1000) -> list[Candle]:
        """Mid-price candles of ``symbol`` for any ``timeframe`` ("1m", "5m", "4h", "1d", ...)
        built from the ticks, bars aligned on the UTC epoch like the bar builder's. The open and
        close are the first and last tick by (time, bus order), as the bar builder saw them.
        With ``start``/``end``: the candles overlapping [start, end), each whole. The latest
        ``limit`` candles, oldest first."""
        step = timeframe_ms(timeframe)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        where, params = ["symbol = {symbol:String}"], {"symbol": symbol, "limit": limit}
        if start is not None:
            where.append(f"ts >= {{start:{TIME}}}")
            params["start"] = _text(_floor(start, step))
        if end is not None:
            where.append(f"ts < {{end:{TIME}}}")
            params["end"] = _text(_floor(end, step, up=True))
        candles = self._query(Candle, f"""
            SELECT toStartOfInterval(ts, INTERVAL {step} MILLISECOND) AS time,
                   argMin(mid, (ts, seq)) AS open, max(mid) AS high, min(mid) AS low,
                   argMax(mid, (ts, seq)) AS close, count() AS ticks
            FROM (SELECT ts, seq, (bid + ask) * 0.5 AS mid FROM {self.database}.ticks FINAL
                  WHERE {' AND '.join(where)})
            GROUP BY time ORDER BY time DESC LIMIT {{limit:UInt32}}""", **params)
        candles.reverse()
        return candles

    def hit_rate_by_hour(self, model: str | None = None) -> list[HourlyHitRate]:
        """Per model and UTC hour of the prediction's event time: resolved BUY/SELL predictions
        and their hits, by the pipeline's rule (:mod:`tradepipe.models.scoring`): a prediction
        made at a bar with mid close ``price`` is resolved by the first bar of its (symbol,
        timeframe) that opens at least ``timeHorizon`` after its bar; the move ``close / price
        - 1`` is BUY above the dead band, SELL below minus it, HOLD within; a hit is a predicted
        direction equal to it. Fallback predictions and those without a horizon, bar or price
        are not scored (as in the pipeline). Unlike the live scorer (a bounded queue per
        series), nothing is forgotten, and two predictions of one model for one bar both count
        (the pipeline emits one)."""
        filters = "AND model = {model:String}" if model is not None else ""
        return self._query(HourlyHitRate, f"""
            SELECT p.model AS model, toHour(p.ts) AS hour, count() AS predictions,
                   countIf(multiIf(b.mid_close / p.price - 1 > {self.dead_band!r}, 'BUY',
                                   b.mid_close / p.price - 1 < -{self.dead_band!r}, 'SELL', 'HOLD') = p.direction) AS hits,
                   hits / predictions AS hitRate
            FROM (SELECT model, ts, symbol, timeframe, direction, assumeNotNull(price) AS price,
                         assumeNotNull(bar_time) + toIntervalMillisecond(assumeNotNull(horizon_ms)) AS due
                  FROM {self.database}.predictions FINAL
                  WHERE direction IN ('BUY', 'SELL') AND NOT fallback AND horizon_ms IS NOT NULL
                        AND bar_time IS NOT NULL AND price > 0 {filters}) AS p
            ASOF INNER JOIN (SELECT symbol, timeframe, bar_time, mid_close FROM {self.database}.bars FINAL) AS b
                ON p.symbol = b.symbol AND p.timeframe = b.timeframe AND b.bar_time >= p.due
            GROUP BY model, hour ORDER BY model, hour""", **({} if model is None else {"model": model}))

    def pnl_by_day(self, symbol: str | None = None) -> list[DailyPnl]:
        """Realized PnL per UTC day of the PositionClosed events (after commissions)."""
        filters = "AND symbol = {symbol:String}" if symbol is not None else ""
        return self._query(DailyPnl, f"""
            SELECT toDate(ts) AS day, count() AS positionsClosed,
                   -- summed in event order: the same figure however the rows lie on disk
                   arraySum(arrayMap(x -> x.3, arraySort(groupArray((ts, event_id, assumeNotNull(pnl)))))) AS pnl
            FROM {self.database}.orders FINAL
            WHERE type = 'PositionClosed' {filters}
            GROUP BY day ORDER BY day""", **({} if symbol is None else {"symbol": symbol}))

    def predictions(self, *, symbol: str | None = None, model: str | None = None,
                    limit: int = 100) -> list[PredictionView]:
        """The latest ``limit`` predictions, newest first."""
        where, params = ["1"], {"limit": limit}
        if symbol is not None:
            where.append("symbol = {symbol:String}")
            params["symbol"] = symbol
        if model is not None:
            where.append("model = {model:String}")
            params["model"] = model
        return self._query(PredictionView, f"""
            SELECT ts AS time, symbol, model, direction, confidence, price
            FROM {self.database}.predictions FINAL WHERE {' AND '.join(where)}
            ORDER BY ts DESC, event_id LIMIT {{limit:UInt32}}""", **params)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> AnalyticsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _floor(at: datetime, step_ms: int, *, up: bool = False) -> datetime:
    """The start of the bar of ``step_ms`` holding ``at`` (or, ``up``, of the first bar not
    before it); bars are aligned on the UTC epoch."""
    step = timedelta(milliseconds=step_ms)
    bars = -(-(_utc(at) - _EPOCH) // step) if up else (_utc(at) - _EPOCH) // step
    return _EPOCH + bars * step


def open_analytics_store(url: str, *, dead_band: float = DEFAULT_DEAD_BAND) -> AnalyticsStore:
    """The analytics store a URL names (see :func:`tradepipe.read.clickhouse.backend_from_url`),
    its tables created if missing."""
    backend, database = backend_from_url(url)
    try:
        return AnalyticsStore(backend, database, dead_band=dead_band)
    except Exception:
        backend.close()
        raise


# --- the projector ----------------------------------------------------------------------------

class AnalyticsProjector:
    """Projects the bus into an :class:`AnalyticsStore`, batch by batch.

    It reads every partition of :data:`TOPICS` that exists, from the positions the store
    holds under ``name`` (a missing topic is picked up once it appears). A step polls up to
    ``batch_size`` records, inserts their rows (one INSERT per table) and then records the
    positions: a crash in between inserts the batch again, and the tables' replacing engine
    folds the copies. Records that do not decode are skipped (the services dead-letter them)."""

    def __init__(self, bus: Bus, store: AnalyticsStore, *, codec: Codec | None = None,
                 batch_size: int = 5000, name: str = PROJECTOR, poll_timeout_s: float = 0.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.bus = bus
        self.store = store
        self.codec = codec or JsonCodec()
        self.batch_size = batch_size
        self.name = name
        self.poll_timeout_s = poll_timeout_s
        self.projected = 0  # events turned into rows
        self.skipped = 0  # records that did not decode
        self._consumer: Consumer | None = None
        self._partitions: frozenset[TopicPartition] = frozenset()
        self._topics: set[str] = set()

    def _assign(self) -> Consumer:
        """The consumer, on every partition of the topics that exist now, resuming from the
        stored positions."""
        partitions = frozenset(self.bus.partitions_of(t for t in TOPICS if t in self.bus.topics()))
        if self._consumer is not None and partitions == self._partitions:
            return self._consumer
        if self._consumer is None:
            self._consumer = self.bus.consumer(None)
            positions = self.store.load_positions(self.name)
        else:  # new topics: keep where the others are
            positions = self._consumer.positions()
        self._consumer.assign(partitions)
        for tp in partitions:
            self._consumer.seek(tp, positions.get(tp, 0))
        self._partitions = partitions
        self._topics = {tp.topic for tp in partitions}
        return self._consumer

    def step(self) -> int:
        """Project the next batch; returns the records consumed (0: nothing new)."""
        consumer = self._consumer if self._consumer is not None else self._assign()
        records = consumer.poll(self.batch_size, timeout_s=self.poll_timeout_s)
        if not records and len(self._topics) < len(TOPICS):  # a topic may have appeared since
            known = self._partitions
            self._assign()
            if self._partitions != known:
                records = consumer.poll(self.batch_size, timeout_s=self.poll_timeout_s)
        if not records:
            return 0
        rows = []
        decode, row_of = self.codec.decode, ROW_OF
        for record in records:
            try:
                event = decode(record.value)
            except DecodeError as exc:
                self.skipped += 1
                log.debug("analytics projector skips %s/%d@%d: %s", record.topic, record.partition,
                          record.offset, exc.reason)
                continue
            make = row_of.get(type(event))
            if make is not None:
                rows.append(make(event, record))
        self.projected += self.store.insert(rows)
        self.store.save_positions(self.name, consumer.positions())
        return len(records)

    def caught_up(self) -> bool:
        """Whether every partition has been projected up to its end offset now."""
        positions = self._assign().positions()
        ends = {topic: self.bus.end_offsets(topic) for topic in self._topics}
        return all(positions.get(tp, 0) >= ends[tp.topic].get(tp.partition, 0) for tp in self._partitions)

    def run(self, stop: threading.Event, *, idle_s: float = 0.2) -> None:
        """Project until ``stop`` is set, waiting ``idle_s`` whenever nothing is new."""
        while not stop.is_set():
            if self.step() == 0:
                stop.wait(idle_s)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def rebuild_analytics(bus: Bus, store: AnalyticsStore, on_progress: Callable[[int], None] | None = None, *,
                      codec: Codec | None = None, batch_size: int = 5000) -> int:
    """Empty ``store`` and project everything on ``bus`` now into it; returns the records read.
    ``on_progress(n)`` is called after each batch with the records it read."""
    store.reset()
    # a network bus delivers in the background: wait a little for a batch rather than spin
    projector = AnalyticsProjector(bus, store, codec=codec, batch_size=batch_size, poll_timeout_s=0.5)
    total = 0
    try:
        while True:
            n = projector.step()
            if n == 0 and projector.caught_up():
                return total
            total += n
            if on_progress is not None and n:
                on_progress(n)
    finally:
        projector.close()


__all__ = ["AnalyticsProjector", "AnalyticsStore", "open_analytics_store", "rebuild_analytics"]
