"""The audit log (R7.3): an append-only, hash-chained SQLite record of every order event with
its causal chain (R3.6), and what reads it: ``explain`` an order, ``verify`` the file.

One file, stdlib ``sqlite3`` in WAL mode (readers such as ``tradepipe audit verify`` never
block the writer). Two tables:

- ``records``: one row per order event, in append order (``seq``): its eventId (unique, so
  appending the same event again, e.g. after a restart re-delivers it, is a no-op), orderId,
  positionId (the order that opened the position the event belongs to), type, timestamp, the
  event's canonical JSON (:class:`~tradepipe.events.codec.JsonCodec`), its causal chain as
  ``[[eventId, sha256 of that event's stored JSON], ...]`` in causal order, ``prev_hash`` (the
  hash of the record before, :data:`GENESIS` for the first) and
  ``hash = sha256(prev_hash || canonical JSON of every other column)``.
- ``chain_events``: each chain event's JSON once, by eventId: the tick, bar, features,
  predictions, signal and verdict behind an order are shared by its placed and executed
  records, and stored once.

Tampering: editing a record breaks its own hash; deleting or inserting one breaks the next
record's ``prev_hash`` link; editing a chain event breaks the digest its records hold;
re-hashing everything from an edit on is only caught against a head hash kept elsewhere
(:attr:`VerifyResult.head`). The database itself refuses UPDATE and DELETE on both tables
(triggers), so only someone who drops the triggers can edit it at all.

Writes are batched: appends share one write transaction, committed every ``commit_every``
appends, on :meth:`AuditLog.flush` and on close, so the log does not sync per event. What was
not committed when a process dies is appended again when its inputs are re-delivered.

What an append reads back is kept in memory, so that a backtest's appends do not query the
file: the digests of the chain events this log stored (:data:`DIGEST_MEMORY` of them, keyed by
the UUID's int), and the latest :data:`RECENT_RECORDS` records this connection appended
(:class:`RecentRecords`), which answer :meth:`AuditLog.events_of` and the duplicate check for
every seq they cover. They cover the records after the head seen when the log was opened;
whenever the head is found elsewhere than where this connection left it (another writer
appended), they restart from that head, and anything older is read from the file.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from tradepipe.events.codec import DecodeError, JsonCodec
from tradepipe.events.envelope import Event
from tradepipe.events.types import (
    BarClosed, FeaturesCalculated, MarketDataReceived, OrderExecuted, OrderPlaced, PositionClosed,
    PredictionGenerated, SagaCompleted, SignalRejected, SignalValidated, TradingSignalGenerated,
)

SCHEMA_VERSION = 1
APPLICATION_ID = 0x54504131  # "TPA1": marks the file as a tradepipe audit log
GENESIS = "0" * 64  # the prev_hash of the first record
FEATURE_GROUPS = ("feature-engineering", "technical-analysis", "market-microstructure")
ORDER_EVENT_TYPES = frozenset(
    ("OrderPlaced", "OrderExecuted", "OrderRejected", "OrderCancelled", "PositionClosed", "SagaCompleted"))
DIGEST_MEMORY = 4096  # chain events whose stored digest is remembered, to skip re-encoding them
RECENT_RECORDS = 20_000  # latest appended records kept in memory (events_of, duplicate check)

_SCHEMA = """
CREATE TABLE records (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL,
    position_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    event_json TEXT NOT NULL,
    chain TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX records_by_order ON records (order_id);
CREATE INDEX records_by_position ON records (position_id);
CREATE TABLE chain_events (
    event_id TEXT PRIMARY KEY,
    event_json TEXT NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER records_append_only_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: records cannot be updated'); END;
CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: records cannot be deleted'); END;
CREATE TRIGGER chain_events_append_only_update BEFORE UPDATE ON chain_events
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: chain events cannot be updated'); END;
CREATE TRIGGER chain_events_append_only_delete BEFORE DELETE ON chain_events
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: chain events cannot be deleted'); END;
"""

_RECORD_COLUMNS = "seq, event_id, order_id, position_id, event_type, timestamp, event_json, chain, prev_hash, hash"
_encode_canonical = msgspec.json.Encoder().encode
_chain_decoder = msgspec.json.Decoder(list[tuple[str, str]])


class AuditLogError(Exception):
    """The file is missing, not an audit log, or of another schema version."""


class UnknownOrderError(LookupError):
    """No record of ``order_id`` in the audit log."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"no order {order_id!r} in the audit log")
        self.order_id = order_id


def closes_a_position(event_type: str, order_id: str, position_id: str) -> bool:
    """Whether an order event belongs to the closing of a position (not to its opening order)."""
    return event_type == "PositionClosed" or position_id not in ("", order_id)


def sha256_hex(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def record_hash(prev_hash: str, seq: int, event_id: str, order_id: str, position_id: str, event_type: str,
                timestamp: str, event_json: str, chain: str) -> str:
    """sha256 of the previous hash followed by the record's other columns as one JSON array
    (unambiguous: no column can bleed into the next)."""
    content = _encode_canonical([seq, event_id, order_id, position_id, event_type, timestamp, event_json, chain])
    return hashlib.sha256(prev_hash.encode() + content).hexdigest()


class AuditRecord(msgspec.Struct, frozen=True):
    """One row of ``records``, as stored."""

    seq: int
    event_id: str
    order_id: str
    position_id: str
    event_type: str
    timestamp: str
    event_json: str
    chain: str  # JSON [[eventId, sha256], ...]
    prev_hash: str
    hash: str

    @property
    def chain_links(self) -> list[tuple[str, str]]:
        return _chain_decoder.decode(self.chain)

    @property
    def is_exit(self) -> bool:
        return closes_a_position(self.event_type, self.order_id, self.position_id)


Problem = Literal["record-hash", "chain-link", "chain-event"]


@dataclass(frozen=True)
class Tampering:
    """The first record found altered: ``problem`` is its own hash (its content was edited),
    its link to the record before (a record was deleted, inserted or rewritten before it), or
    a chain event whose stored JSON no longer matches the digest the record holds."""

    seq: int
    order_id: str
    problem: Problem
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # records checked (up to and including the tampered one)
    chain_events: int  # distinct chain events checked
    head: str  # hash of the last record checked: anchor it elsewhere to detect a rewritten tail
    tampered: Tampering | None = None


@dataclass(frozen=True)
class Explanation:
    """Everything the audit log knows about one order: its events and those of its position
    (log order), and the decoded causal chains behind them. ``missing`` names what a chain
    lacks (the chain was recorded with gaps, e.g. a tick evicted from the trail's cache)."""

    order_id: str
    events: list[Event]
    tick: MarketDataReceived | None = None
    bar: BarClosed | None = None
    features: list[FeaturesCalculated] = field(default_factory=list)
    predictions: list[PredictionGenerated] = field(default_factory=list)
    signal: TradingSignalGenerated | None = None
    verdict: SignalValidated | SignalRejected | None = None
    exit_ticks: list[MarketDataReceived] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class RecentRecords:
    """The events of every record with seq above ``after_seq`` (all of them: it is not a
    sample), indexed as :meth:`AuditLog.records` selects them: by orderId and by positionId.
    Past ``capacity`` records the oldest is forgotten and ``after_seq`` moves past it."""

    __slots__ = ("capacity", "after_seq", "event_ids", "_by_id", "_order")

    def __init__(self, capacity: int, after_seq: int) -> None:
        self.capacity = capacity
        self.after_seq = after_seq
        self.event_ids: set[str] = set()
        self._by_id: dict[str, list[Event]] = {}  # orderId or positionId -> events, seq order
        self._order: deque[tuple[str, tuple[str, ...]]] = deque()  # (eventId, its index keys), seq order

    def reset(self, after_seq: int) -> None:
        """Forget everything: the records after ``after_seq`` are the next ones added."""
        self.after_seq = after_seq
        self.event_ids.clear()
        self._by_id.clear()
        self._order.clear()

    def add(self, event_id: str, order_id: str, position_id: str, event: Event) -> None:
        """The record after the last one added (seqs are consecutive)."""
        keys = (order_id,) if position_id == order_id else (order_id, position_id)
        by_id = self._by_id
        for key in keys:
            events = by_id.get(key)
            if events is None:
                by_id[key] = [event]
            else:
                events.append(event)
        self.event_ids.add(event_id)
        self._order.append((event_id, keys))
        if len(self._order) > self.capacity:
            old_id, old_keys = self._order.popleft()
            self.event_ids.discard(old_id)
            for key in old_keys:  # the oldest record is the first event of each of its keys
                events = by_id[key]
                del events[0]
                if not events:
                    del by_id[key]
            self.after_seq += 1

    def events(self, order_id: str) -> list[Event]:
        return list(self._by_id.get(order_id, ()))


class AuditLog:
    """The audit log file at ``path`` (created with ``create``, else it must exist)."""

    def __init__(self, path: str | os.PathLike[str], *, commit_every: int = 100, create: bool = True) -> None:
        if commit_every < 1:
            raise ValueError("commit_every must be at least 1")
        self.path = str(path)
        if not create and not Path(self.path).exists():
            raise AuditLogError(f"audit log {self.path!r} does not exist")
        self.commit_every = commit_every
        self.closed = False
        self._codec = JsonCodec()
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._open_schema()
        except BaseException:
            self._conn.close()
            raise
        self._pending = 0  # appends in the open transaction
        self._head: tuple[int, str] = self._read_head()  # (seq, hash) of the last record, as last seen
        self._recent = RecentRecords(RECENT_RECORDS, after_seq=self._head[0])
        # chain eventId (its UUID's int) -> (eventId text, digest of its stored JSON); bounded
        self._digests: dict[int, tuple[str, str]] = {}

    def _open_schema(self) -> None:
        conn = self._conn
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise AuditLogError(f"{self.path!r} is not a SQLite database, or it is corrupt ({exc})") from None
        if app_id == 0 and not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(
                f"BEGIN; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        elif app_id != APPLICATION_ID:
            raise AuditLogError(f"{self.path!r} is a SQLite database but not a tradepipe audit log")
        elif (version := conn.execute("PRAGMA user_version").fetchone()[0]) != SCHEMA_VERSION:
            raise AuditLogError(f"{self.path!r} has audit schema version {version}; this tradepipe reads {SCHEMA_VERSION}")
        # FULL: a committed audit record survives power loss; batching keeps the syncs rare.
        conn.execute("PRAGMA synchronous=FULL")

    # -- writing ----------------------------------------------------------------------------
    def append(self, event: Event, chain: Sequence[Event]) -> bool:
        """Append ``event`` (an order event) with its causal ``chain`` (causal order); False if
        the log already holds it. Commits every ``commit_every`` appends."""
        conn = self._begin()
        event_id = str(event.event_id)
        if self._is_stored(event_id):
            return False
        # deduplicated by the UUID's int: UUID.__hash__ is Python code, an int hashes in C
        links = self._stored_links(conn, {e.event_id.int: e for e in chain}.values())
        order_id = getattr(event, "order_id", "") or getattr(event, "position_id", "")
        # an event without a positionId (rejected, cancelled, saga) takes its order's from the chain
        position_id = getattr(event, "position_id", "") or next(
            (e.position_id for e in chain if getattr(e, "order_id", None) == order_id and getattr(e, "position_id", "")),
            "")
        seq, prev_hash = self._head[0] + 1, self._head[1]
        row = (seq, event_id, order_id, position_id, event.type, event.timestamp.isoformat(),
               self._codec.encode(event).decode(), _encode_canonical(links).decode())
        digest = record_hash(prev_hash, *row)
        conn.execute(f"INSERT INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (*row, prev_hash, digest))
        self._head = (seq, digest)
        self._recent.add(event_id, order_id, position_id, event)
        self._pending += 1
        if self._pending >= self.commit_every:
            self.flush()
        return True

    def _begin(self) -> sqlite3.Connection:
        conn = self._conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")  # the write lock: the head read now stays the head
            self._sync_head()
        return conn

    def _read_head(self) -> tuple[int, str]:
        row = self._conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return row if row else (0, GENESIS)

    def _sync_head(self) -> None:
        """Read the head; if another writer moved it, the records in memory no longer cover
        every seq after theirs: start them again from the new head."""
        head = self._read_head()
        if head != self._head:
            self._head = head
            self._recent.reset(after_seq=head[0])

    def _is_stored(self, event_id: str) -> bool:
        """Whether a record holds ``event_id`` (inside the write transaction)."""
        if event_id in self._recent.event_ids:
            return True
        if self._recent.after_seq == 0:  # the memory covers every record
            return False
        return self._conn.execute("SELECT 1 FROM records WHERE event_id = ?", (event_id,)).fetchone() is not None

    def _stored_links(self, conn: sqlite3.Connection, events: Iterable[Event]) -> list[tuple[str, str]]:
        """``[eventId, digest of the JSON chain_events holds]`` of each of ``events``, storing
        the new ones (one batched insert)."""
        digests, encode = self._digests, self._codec.encode
        links: list[tuple[str, str] | None] = []
        new: list[tuple[int, uuid.UUID, str, str]] = []  # (index in links, id, its text, JSON)
        for event in events:
            known = digests.get(event.event_id.int)
            if known is None:
                new.append((len(links), event.event_id, str(event.event_id), encode(event).decode()))
            links.append(known)
        if new:
            inserted = conn.executemany("INSERT OR IGNORE INTO chain_events (event_id, event_json) VALUES (?, ?)",
                                        [(event_id, data) for _, _, event_id, data in new]).rowcount
            if len(digests) + len(new) > DIGEST_MEMORY:
                digests.clear()  # cheap bound; a miss only costs one re-encode
            for index, uid, event_id, data in new:
                if inserted != len(new):  # some were stored before: their digest is of the stored JSON
                    data = conn.execute("SELECT event_json FROM chain_events WHERE event_id = ?",
                                        (event_id,)).fetchone()[0]
                links[index] = (event_id, sha256_hex(data))
                digests[uid.int] = links[index]
        return links  # type: ignore[return-value]  # every None was replaced

    def flush(self) -> None:
        """Commit the appends not committed yet."""
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._pending = 0

    def close(self) -> None:
        """Commit and close (again: nothing)."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._conn.close()
            self.closed = True

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._conn.execute("SELECT count(*) FROM records").fetchone()[0]

    def records(self, order_id: str) -> list[AuditRecord]:
        """The records of ``order_id`` and of the position it opened (its closing order's
        events carry it as positionId), in log order; empty if none."""
        rows = self._conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE order_id = ?1 OR position_id = ?1 ORDER BY seq",
            (order_id,),
        ).fetchall()
        return [AuditRecord(*row) for row in rows]

    def event(self, record: AuditRecord) -> Event:
        """``record``'s event, decoded (raises DecodeError if its JSON was damaged)."""
        return self._codec.decode(record.event_json.encode())

    def events_of(self, order_id: str) -> list[Event]:
        """The events of :meth:`records` (decoded, or as appended if still in memory)."""
        if not self._conn.in_transaction:  # outside our write lock another writer may have appended
            self._sync_head()
        recent = self._recent
        if recent.after_seq == 0:
            return recent.events(order_id)
        rows = self._conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE (order_id = ?1 OR position_id = ?1) AND seq <= ?2 ORDER BY seq",
            (order_id, recent.after_seq),
        ).fetchall()
        return [self.event(AuditRecord(*row)) for row in rows] + recent.events(order_id)

    def chain(self, record: AuditRecord) -> list[Event | None]:
        """``record``'s chain events, decoded, in causal order (None for one not stored)."""
        out: list[Event | None] = []
        for event_id, _ in record.chain_links:
            row = self._conn.execute("SELECT event_json FROM chain_events WHERE event_id = ?", (event_id,)).fetchone()
            out.append(self._codec.decode(row[0].encode()) if row else None)
        return out

    def verify(self) -> VerifyResult:
        """Walk the whole log, in order, and report the first tampered record."""
        expected_prev, checked = GENESIS, 0
        digests: dict[str, str | None] = {}  # chain eventId -> digest of its stored JSON
        cursor = self._conn.execute(f"SELECT {_RECORD_COLUMNS} FROM records ORDER BY seq")
        try:
            for row in cursor:
                record = AuditRecord(*row)
                checked += 1
                problem = self._check(record, expected_prev, digests)
                if problem is not None:
                    return VerifyResult(False, checked, len(digests), expected_prev,
                                        Tampering(record.seq, record.order_id, *problem))
                expected_prev = record.hash
        finally:
            cursor.close()
        return VerifyResult(True, checked, len(digests), expected_prev)

    def _check(self, r: AuditRecord, expected_prev: str,
               digests: dict[str, str | None]) -> tuple[Problem, str] | None:
        recomputed = record_hash(r.prev_hash, r.seq, r.event_id, r.order_id, r.position_id, r.event_type,
                                 r.timestamp, r.event_json, r.chain)
        if recomputed != r.hash:
            return "record-hash", f"the stored hash {r.hash[:12]} does not match the record's content ({recomputed[:12]})"
        if r.prev_hash != expected_prev:
            return "chain-link", (f"prev_hash {r.prev_hash[:12]} is not the hash of the record before "
                                  f"({expected_prev[:12]}): a record was deleted, inserted or rewritten")
        for event_id, digest in r.chain_links:
            if event_id not in digests:
                row = self._conn.execute("SELECT event_json FROM chain_events WHERE event_id = ?", (event_id,)).fetchone()
                digests[event_id] = sha256_hex(row[0]) if row else None
            stored = digests[event_id]
            if stored is None:
                return "chain-event", f"chain event {event_id} is missing"
            if stored != digest:
                return "chain-event", f"chain event {event_id} no longer matches its digest {digest[:12]}"
        return None

    # -- explaining ---------------------------------------------------------------------------
    def explain(self, order_id: str) -> Explanation:
        """The order's events and the causal chains behind them; raises
        :class:`UnknownOrderError` if the log has no record of ``order_id``."""
        records = self.records(order_id)
        if not records:
            raise UnknownOrderError(order_id)
        opened_by = {r.position_id for r in records} - {"", order_id}
        for position_id in opened_by:  # a closing order: the whole position
            records.extend(self.records(position_id))
        records = sorted({r.seq: r for r in records}.values(), key=lambda r: r.seq)
        return _Explainer(self, order_id, records).explanation()


class _Explainer:
    """Sorts the decoded chain events of an order's records into an :class:`Explanation`."""

    def __init__(self, log: AuditLog, order_id: str, records: list[AuditRecord]) -> None:
        self.log, self.order_id, self.records = log, order_id, records
        self.missing: list[str] = []
        self.seen: set[str] = set()
        self.found: dict[type, list[Event]] = {}
        self.exit_ticks: list[MarketDataReceived] = []

    def explanation(self) -> Explanation:
        events = self._decode_events()
        for record in self.records:
            self._collect(record)
        found = self.found
        ticks = found.get(MarketDataReceived, [])
        features = sorted(found.get(FeaturesCalculated, []), key=lambda f: _rank(FEATURE_GROUPS, f.group))
        predictions = found.get(PredictionGenerated, [])
        signal = _first(found.get(TradingSignalGenerated))
        verdict = _first(found.get(SignalValidated, []) + found.get(SignalRejected, []))
        entry = [r for r in self.records if not r.is_exit]
        if entry:
            self._note_gaps(ticks, found.get(BarClosed), features, predictions, signal, verdict)
        else:
            opened_by = next(r.position_id for r in self.records if r.position_id)
            self.missing.append(f"the opening order {opened_by}")
        if any(r.is_exit for r in self.records) and not self.exit_ticks:
            self.missing.append("the tick that triggered the exit")
        return Explanation(
            order_id=self.order_id, events=events, tick=_first(ticks), bar=_first(found.get(BarClosed)),
            features=features, predictions=predictions, signal=signal, verdict=verdict,
            exit_ticks=self.exit_ticks, missing=self.missing,
        )

    def _decode_events(self) -> list[Event]:
        events = []
        for record in self.records:
            try:
                events.append(self.log.event(record))
            except DecodeError as exc:
                self.missing.append(f"record {record.seq} ({record.event_type}) is unreadable: {exc.reason}")
        return events

    def _collect(self, record: AuditRecord) -> None:
        try:
            chain = self.log.chain(record)
        except DecodeError as exc:
            self.missing.append(f"the chain of record {record.seq} is unreadable: {exc.reason}")
            return
        for (event_id, _), event in zip(record.chain_links, chain):
            if event is None:
                self.missing.append(f"chain event {event_id} of record {record.seq}")
            elif event_id not in self.seen and event.type not in ORDER_EVENT_TYPES:
                self.seen.add(event_id)
                if record.is_exit and type(event) is MarketDataReceived:
                    self.exit_ticks.append(event)
                else:
                    self.found.setdefault(type(event), []).append(event)

    def _note_gaps(self, ticks, bars, features, predictions, signal, verdict) -> None:
        if not ticks:
            self.missing.append("the tick")
        if not bars:
            self.missing.append("the bar")
        groups = {f.group for f in features}
        self.missing.extend(f"features: {g}" for g in FEATURE_GROUPS if g not in groups)
        if signal is not None:
            answered = {p.metadata.producer for p in predictions}
            self.missing.extend(f"the prediction of {c.producer or c.model}" for c in signal.contributors
                                if (c.producer or c.model) not in answered)
        if not predictions and (signal is None or not signal.contributors):
            self.missing.append("predictions")
        if signal is None:
            self.missing.append("the signal")
        if verdict is None:
            self.missing.append("the validator's verdict")


def _first(events: list | None):
    return events[0] if events else None


def _rank(order: tuple[str, ...], value: str) -> int:
    return order.index(value) if value in order else len(order)


# -- rendering ---------------------------------------------------------------------------------

def render_explanation(explanation: Explanation):
    """A rich renderable telling, in causal order, why the order was placed and how it ended."""
    x = explanation
    parts: list = [Text(f"Order {x.order_id}", style="bold")]

    def section(title: str, *columns: str) -> Table:
        table = Table(*columns, title=title, title_justify="left", box=box.SIMPLE, show_header=bool(columns))
        parts.append(table)
        return table

    if x.tick is not None:
        t = x.tick
        section("Tick", "time", "symbol", "bid", "ask").add_row(
            t.data.timestamp.isoformat(), t.symbol or "", f"{t.data.bid:.5f}", f"{t.data.ask:.5f}")
    if x.bar is not None:
        b, m = x.bar, x.bar.mid
        section("Bar", "timeframe", "open time", "mid open", "high", "low", "close", "spread mean", "spread max").add_row(
            b.timeframe, b.bar_time.isoformat(), *(f"{v:.5f}" for v in (m.open, m.high, m.low, m.close)),
            f"{b.spread_mean:.6f}", f"{b.spread_max:.6f}")
    if x.features:
        table = section("Features", "group", "values")
        for f in x.features:
            table.add_row(f.group, ", ".join(f"{k}={_number(v)}" for k, v in f.features.items()))
    if x.predictions:
        table = section("Predictions", "model", "service", "direction", "confidence", "fallback")
        for p in x.predictions:
            table.add_row(p.model.name, p.metadata.producer, p.prediction.direction,
                          f"{p.prediction.confidence:.3f}", "yes" if p.fallback else "no")
    if x.signal is not None:
        s = x.signal
        parts.append(Text(f"Signal: {s.direction} confidence {s.confidence:.3f} at {_number(s.price)} "
                          f"(target {_number(s.target_price)}, stop {_number(s.stop_loss)})"))
        table = section("Contributors", "model", "direction", "confidence", "weight", "fallback")
        for c in s.contributors:
            table.add_row(c.model, c.direction, f"{c.confidence:.3f}", f"{c.weight:.3f}", "yes" if c.fallback else "no")
        if s.missing_models:
            parts.append(Text(f"models that did not answer: {', '.join(s.missing_models)}"))
    if x.verdict is not None:
        v = x.verdict
        table = section(f"Validator: {'VALIDATED' if type(v) is SignalValidated else 'REJECTED'}", "rule", "passed", "detail")
        for r in v.verdicts:
            table.add_row(r.rule, "yes" if r.passed else "NO", r.detail)
    exits = [e for e in x.events if closes_a_position(e.type, getattr(e, "order_id", ""), getattr(e, "position_id", ""))]
    entry = [e for e in x.events if e not in exits]
    if entry:
        _order_rows(section("Order", *ORDER_COLUMNS), entry)
    for tick in x.exit_ticks:
        section("Exit tick", "time", "bid", "ask").add_row(
            tick.data.timestamp.isoformat(), f"{tick.data.bid:.5f}", f"{tick.data.ask:.5f}")
    if exits:
        _order_rows(section("Exit", *ORDER_COLUMNS), exits)
    if x.missing:
        parts.append(Text(f"missing from the causal chain: {'; '.join(x.missing)}", style="yellow"))
    return Group(*parts)


ORDER_COLUMNS = ("time", "event", "order", "details")


def _order_rows(table: Table, events: list[Event]) -> None:
    for event in events:
        table.add_row(event.timestamp.isoformat(), event.type, getattr(event, "order_id", ""), _order_details(event))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _order_details(event: Event) -> str:
    if type(event) is OrderPlaced:
        return (f"{event.side} {event.volume:g} {event.order_type} ({event.reason}) price {_number(event.price)} "
                f"stop {_number(event.stop_loss)} take-profit {_number(event.take_profit)} via {event.broker}")
    if type(event) is OrderExecuted:
        return (f"filled {event.side} {event.volume:g} at {event.price:.5f}, commission {event.commission:g}, "
                f"slippage {event.slippage:g}")
    if type(event) is PositionClosed:
        return (f"closed {event.side} {event.volume:g}: entry {event.entry_price:.5f}, exit {event.exit_price:.5f}, "
                f"PnL {event.pnl:.2f} ({event.reason})")
    if type(event) is SagaCompleted:
        failed = f", failed at {event.failed_step}" if event.failed_step else ""
        return f"saga {event.outcome}{failed} {event.reason}".rstrip()
    return getattr(event, "reason", "")


__all__ = [
    "AuditLog", "AuditLogError", "AuditRecord", "Explanation", "Tampering", "UnknownOrderError", "VerifyResult",
    "record_hash", "render_explanation",
]
