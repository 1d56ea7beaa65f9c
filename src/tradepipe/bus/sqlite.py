"""SQLite bus: the embedded, durable default (R2.2). One file, no server.

``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's convention),
options ``?synchronous=NORMAL|FULL`` (NORMAL, the default, survives a killed process; FULL
also survives power loss), ``session_timeout_ms`` (default 10000) and ``busy_timeout_ms``.

The file is in WAL mode, so any number of processes can produce to and consume from it at
once: writers serialize on SQLite's write lock (``BEGIN IMMEDIATE`` + ``busy_timeout``),
readers never block. Offsets come from per-partition counters read and bumped inside the
writing transaction, so concurrent producers never collide. Like Kafka, the log stores record
batches: one row per partition per flush, msgpack-encoded, because per-row SQLite overhead,
not I/O, is what limits a record-per-row table (~150k rows/s even in memory). Group membership
lives in the file too: each member heartbeats its row, rows past their expiry are ignored, and
every member derives the same split with :func:`assign_partitions`; no coordinator.

Every producer, consumer and bus object owns its own connection, guarded by a lock so it may
be used from any thread (e.g. an asyncio thread pool).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from tradepipe.bus.base import (
    DEFAULT_PARTITIONS, Bus, BusClosedError, BusError, BusURLError, Consumer, LogConsumer,
    Producer, Record, TopicInfo, TopicPartition, UnknownTopicError, assign_partitions, check_record_types,
    now_ms,
)
from tradepipe.bus.partitioner import partition_for

SCHEMA_VERSION = 1
APPLICATION_ID = 0x54504231  # "TPB1": marks the file as a tradepipe bus (PRAGMA application_id)

DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_BUSY_TIMEOUT_MS = 10_000
SYNCHRONOUS_MODES = ("NORMAL", "FULL")
# A producer flushes on its own past either bound, so its memory stays bounded.
AUTO_FLUSH_RECORDS = 10_000
AUTO_FLUSH_BYTES = 16 << 20
MEMBERSHIP_REFRESH_S = 0.1  # how stale a consumer's view of its group may get; keeps poll() cheap
WAIT_STEP_S = 0.002  # how often an idle poll() checks the file for commits of other connections

_SCHEMA = """
CREATE TABLE topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER
) WITHOUT ROWID;
-- One log per topic partition. Records refer to it by id, which keeps their key small.
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    UNIQUE (topic, partition)
);
-- records: msgpack [[ts_ms, key, value, headers], ...] for offsets base_offset, base_offset + 1, ...
-- max_ts_ms lets offsets_for_time skip whole batches. A rowid table: batches can be large.
CREATE TABLE batches (
    log_id INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    max_ts_ms INTEGER NOT NULL,
    records BLOB NOT NULL,
    PRIMARY KEY (log_id, base_offset)
);
CREATE TABLE group_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
-- token tells apart two incarnations of one static member (same member_id = instance_id).
CREATE TABLE group_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    token TEXT NOT NULL,
    topics TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
"""

Headers = tuple[tuple[str, bytes], ...]
Entry = tuple[int, bytes | None, bytes, Headers]  # (ts_ms, key, value, headers), one record of a batch
_encode_batch = msgspec.msgpack.Encoder().encode
_batch_decoder = msgspec.msgpack.Decoder(list[Entry])


def _decode_batch(blob: bytes, topic: str, partition: int, base_offset: int) -> list[Entry]:
    """A stored batch's records; a damaged blob is a BusError naming where it is."""
    try:
        return _batch_decoder.decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BusError(
            f"corrupt record batch in {topic!r} partition {partition} at offset {base_offset}: {exc}"
        ) from None



class SQLiteOptions(msgspec.Struct, frozen=True):
    path: str
    synchronous: str = "NORMAL"
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS


def parse_url(url: str) -> SQLiteOptions:
    """``sqlite:///path.db?option=value`` -> options; raises :class:`BusURLError`."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise BusURLError(f"bad SQLite bus URL {url!r}: scheme must be sqlite")
    if parts.netloc:
        raise BusURLError(
            f"bad SQLite bus URL {url!r}: no host allowed; use sqlite:///relative.db or sqlite:////absolute.db"
        )
    path = unquote(parts.path[1:])  # SQLAlchemy: the first slash only separates the (empty) host
    if not path or path.endswith("/"):
        raise BusURLError(f"bad SQLite bus URL {url!r}: no file name; e.g. sqlite:///tradepipe.db")
    if path == ":memory:":
        raise BusURLError(f"bad SQLite bus URL {url!r}: an in-memory SQLite bus is not shareable; use memory://")
    options: dict[str, object] = {}
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name in options:
            raise BusURLError(f"bad SQLite bus URL {url!r}: option {name!r} given twice")
        if name == "synchronous":
            if raw.upper() not in SYNCHRONOUS_MODES:
                raise BusURLError(f"bad SQLite bus URL {url!r}: synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
            options[name] = raw.upper()
        elif name in ("session_timeout_ms", "busy_timeout_ms"):
            if not raw.isdigit() or int(raw) <= 0:
                raise BusURLError(f"bad SQLite bus URL {url!r}: {name} must be a positive integer")
            options[name] = int(raw)
        else:
            raise BusURLError(
                f"bad SQLite bus URL {url!r}: unknown option {name!r}; "
                "known: synchronous, session_timeout_ms, busy_timeout_ms"
            )
    return SQLiteOptions(path, **options)


class _Connection:
    """One sqlite3 connection behind a lock; turns sqlite3 errors into :class:`BusError`."""

    def __init__(self, options: SQLiteOptions) -> None:
        self.path = options.path
        self._lock = threading.Lock()
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, reads run in autocommit;
            # timeout is SQLite's busy_timeout, how long to wait for another process's write lock.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False,
                timeout=options.busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise BusError(f"cannot open SQLite bus {self.path!r}: {exc}") from None

    @contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise BusClosedError(f"SQLite bus {self.path!r} is closed")
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                raise BusError(f"SQLite bus {self.path!r}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: takes the file's write lock at once, so reads inside it are current."""
        with self.use() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self.use() as conn:
            return conn.execute(sql, params).fetchall()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _is_new(conn: sqlite3.Connection, path: str) -> bool:
    """Whether the file is still empty; raises unless it is a tradepipe bus of our schema."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id == 0:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise BusError(f"{path!r} is a SQLite database but not a tradepipe bus (it has other tables)")
        return True
    if app_id != APPLICATION_ID:
        raise BusError(f"{path!r} is a SQLite database of another application (application_id {app_id:#x})")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise BusError(f"{path!r} has bus schema version {version}; this tradepipe reads version {SCHEMA_VERSION}")
    return False


def _open(options: SQLiteOptions, create: bool) -> _Connection:
    if not create and not os.path.exists(options.path):
        raise BusError(f"SQLite bus file {options.path!r} does not exist")
    # The file is only ever opened through SQLite: a plain open()/close() of it would drop this
    # process's POSIX locks on it, and other processes could then reset the WAL under our feet.
    db = _Connection(options)
    try:
        # Only reads until the file is known to be ours (or empty): never alter someone else's.
        with db.use() as conn:
            try:
                is_new = _is_new(conn, db.path)
            except sqlite3.DatabaseError as exc:
                raise BusError(f"{db.path!r} is not a SQLite database, or it is corrupt ({exc})") from None
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {options.synchronous}")
        if is_new:
            with db.transaction() as conn:
                if _is_new(conn, db.path):  # another process may have created it meanwhile
                    # One statement at a time: executescript() would COMMIT our transaction first.
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


class _TopicCache:
    """Topic -> log ids by partition, read from the file and re-read on a miss."""

    def __init__(self, db: _Connection) -> None:
        self._db = db
        self._logs: dict[str, tuple[int, ...]] = {}

    def logs(self, topic: str) -> tuple[int, ...]:
        logs = self._logs.get(topic)
        if logs is None:
            rows = self._db.query("SELECT id FROM logs WHERE topic = ? ORDER BY partition", (topic,))
            if not rows:
                raise UnknownTopicError(topic)
            logs = self._logs[topic] = tuple(r[0] for r in rows)
        return logs

    def log_id(self, tp: TopicPartition) -> int:
        logs = self.logs(tp.topic)
        if not 0 <= tp.partition < len(logs):
            raise BusError(f"{tp.topic!r} has no partition {tp.partition} ({len(logs)} partitions)")
        return logs[tp.partition]


class SQLiteProducer(Producer):
    def __init__(self, options: SQLiteOptions) -> None:
        self._db = _open(options, create=False)
        self._topics = _TopicCache(self._db)
        self._pending: dict[int, list[Entry]] = {}  # log id -> records waiting for flush()
        self._pending_count = 0
        self._pending_bytes = 0
        self._round_robin = 0

    def send(self, topic, value, key=None, *, timestamp_ms=None, headers=(), partition=None) -> None:
        logs = self._topics.logs(topic)
        if partition is not None:
            if not 0 <= partition < len(logs):
                raise ValueError(f"partition {partition} out of range for {topic!r} ({len(logs)} partitions)")
        elif key is None:
            self._round_robin += 1
            partition = self._round_robin % len(logs)
        else:
            partition = partition_for(key, len(logs))
        headers = tuple(headers)
        check_record_types(value, key, headers)
        entry = (now_ms() if timestamp_ms is None else int(timestamp_ms), key, value, headers)
        self._pending.setdefault(logs[partition], []).append(entry)
        self._pending_count += 1
        self._pending_bytes += len(value)
        if self._pending_count >= AUTO_FLUSH_RECORDS or self._pending_bytes >= AUTO_FLUSH_BYTES:
            self.flush()

    def flush(self, timeout_s: float | None = None) -> int:
        if not self._pending:
            return 0
        batches = [
            (log_id, max(map(itemgetter(0), pending)), _encode_batch(pending), len(pending))
            for log_id, pending in self._pending.items()
        ]
        with self._db.transaction() as conn:
            for log_id, max_ts, records, count in batches:
                base = conn.execute(
                    "UPDATE logs SET next_offset = next_offset + ? WHERE id = ? RETURNING next_offset - ?",
                    (count, log_id, count),
                ).fetchall()[0][0]
                conn.execute(
                    "INSERT INTO batches (log_id, base_offset, max_ts_ms, records) VALUES (?, ?, ?, ?)",
                    (log_id, base, max_ts, records),
                )
        delivered = self._pending_count
        self._pending.clear()
        self._pending_count = self._pending_bytes = 0
        return delivered

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()


class SQLiteConsumer(LogConsumer):
    def __init__(self, options: SQLiteOptions, group, topics, instance_id, auto_offset_reset) -> None:
        super().__init__(group, topics, auto_offset_reset)
        self._db = _open(options, create=False)
        try:
            self._topics = _TopicCache(self._db)
            for topic in self.subscription:
                self._topics.logs(topic)
        except BaseException:
            self._db.close()
            raise
        self._session_timeout_ms = options.session_timeout_ms
        self.member_id = instance_id or uuid.uuid4().hex
        self._token = uuid.uuid4().hex
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._next_refresh = 0.0
        self._next_heartbeat = 0.0
        self._data_version: int | None = None
        self._decoded: dict[int, tuple[int, list[Entry]]] = {}  # log id -> its last batch read
        if group is not None:
            self._join()

    # -- group membership -------------------------------------------------------------------
    def _join(self) -> None:
        with self._db.transaction() as conn:
            self._insert_member(conn)

    def _insert_member(self, conn: sqlite3.Connection) -> None:
        # INSERT OR REPLACE: a static member (instance_id) takes its predecessor's row at once.
        conn.execute(
            "INSERT OR REPLACE INTO group_members (group_id, member_id, token, topics, expires_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            (self.group, self.member_id, self._token, json.dumps(self.subscription),
             now_ms() + self._session_timeout_ms),
        )
        self._next_heartbeat = time.monotonic() + self._session_timeout_ms / 3000

    def _heartbeat(self) -> None:
        now = now_ms()
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM group_members WHERE group_id = ? AND expires_ms <= ?", (self.group, now))
            updated = conn.execute(
                "UPDATE group_members SET expires_ms = ? WHERE group_id = ? AND member_id = ? AND token = ?",
                (now + self._session_timeout_ms, self.group, self.member_id, self._token),
            ).rowcount
            if updated:
                self._next_heartbeat = time.monotonic() + self._session_timeout_ms / 3000
                return
            if conn.execute(
                "SELECT 1 FROM group_members WHERE group_id = ? AND member_id = ?", (self.group, self.member_id)
            ).fetchone():
                raise BusError(
                    f"consumer {self.member_id!r} of group {self.group!r} was fenced: "
                    "another consumer joined with the same instance_id"
                )
            self._insert_member(conn)  # our row expired (no poll for a whole session): join again

    def _group_assignment(self) -> frozenset[TopicPartition]:
        now = time.monotonic()
        if now < self._next_refresh:
            return self._assignment
        if now >= self._next_heartbeat:
            self._heartbeat()
        rows = self._db.query(
            "SELECT member_id, topics FROM group_members WHERE group_id = ? AND expires_ms > ?",
            (self.group, now_ms()),
        )
        subscriptions = {member: json.loads(topics) for member, topics in rows}
        subscriptions[self.member_id] = self.subscription
        counts = {}
        for topics in subscriptions.values():
            for topic in topics:
                try:
                    counts[topic] = len(self._topics.logs(topic))
                except UnknownTopicError:
                    pass  # another member's topic this file no longer has: nothing to split
        self._assignment = assign_partitions(subscriptions, counts)[self.member_id]
        self._next_refresh = time.monotonic() + MEMBERSHIP_REFRESH_S
        return self._assignment

    def _leave(self) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "DELETE FROM group_members WHERE group_id = ? AND member_id = ? AND token = ?",
                (self.group, self.member_id, self._token),
            )

    # -- storage ----------------------------------------------------------------------------
    def _fetch(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        topic, partition = tp
        log_id = self._topics.log_id(tp)
        cached_base, cached_entries = self._decoded.get(log_id, (-1, []))
        out: list[Record] = []
        with self._db.use() as conn:
            # From the batch holding ``offset`` on, read lazily, so only as many rows as needed;
            # the batch already decoded is not read again (idle polls keep hitting the last one).
            cursor = conn.execute(
                "SELECT base_offset, CASE base_offset WHEN ?3 THEN NULL ELSE records END FROM batches "
                "WHERE log_id = ?1 AND base_offset >= coalesce("
                "(SELECT max(base_offset) FROM batches WHERE log_id = ?1 AND base_offset <= ?2), 0) "
                "ORDER BY base_offset",
                (log_id, offset, cached_base),
            )
            try:
                for base, blob in cursor:
                    if blob is None:
                        entries = cached_entries
                    else:
                        # Keep the last batch per partition: polls mostly read it in slices.
                        entries = _decode_batch(blob, topic, partition, base)
                        self._decoded[log_id] = (base, entries)
                    start = max(offset - base, 0)
                    for i, (ts, key, value, headers) in enumerate(entries[start:start + limit - len(out)], base + start):
                        out.append(Record(topic, partition, i, value, key, ts, headers))
                    if len(out) >= limit:
                        break
            finally:
                cursor.close()  # an unfinished read would pin the WAL
        return out

    def _wait(self, timeout_s: float) -> None:
        # data_version changes when another connection commits to the file: a cheap way to
        # notice new records without re-querying every partition.
        deadline = time.monotonic() + timeout_s
        while True:
            version = self._db.query("PRAGMA data_version")[0][0]
            if version != self._data_version:
                self._data_version = version
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(WAIT_STEP_S, remaining))

    def _load_committed(self, tp: TopicPartition) -> int | None:
        rows = self._db.query(
            "SELECT offset FROM group_offsets WHERE group_id = ? AND topic = ? AND partition = ?",
            (self.group, tp.topic, tp.partition),
        )
        return rows[0][0] if rows else None

    def _store_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO group_offsets (group_id, topic, partition, offset) VALUES (?, ?, ?, ?)",
                [(self.group, tp.topic, tp.partition, offset) for tp, offset in offsets.items()],
            )

    def _end_offset(self, tp: TopicPartition) -> int:
        return self._db.query("SELECT next_offset FROM logs WHERE id = ?", (self._topics.log_id(tp),))[0][0]

    def assign(self, partitions) -> None:
        partitions = [TopicPartition(*tp) for tp in partitions]
        for tp in partitions:
            self._topics.log_id(tp)
        super().assign(partitions)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._db.close()


class SQLiteBus(Bus):
    def __init__(self, options: SQLiteOptions, url: str, *, create: bool = True) -> None:
        self.url = url
        self.path = options.path  # the runtime keeps checkpoints in the same file
        self._options = options
        self._db = _open(options, create)

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> SQLiteBus:
        """Open (with ``create``, or create) the bus file ``url`` names."""
        return cls(parse_url(url), url, create=create)

    def create_topic(self, name, partitions=DEFAULT_PARTITIONS, *, retention_ms=None) -> TopicInfo:
        if not isinstance(name, str) or not name:
            raise ValueError("a topic name must be a non-empty string")
        if partitions < 1:
            raise ValueError("a topic needs at least one partition")
        with self._db.transaction() as conn:
            row = conn.execute("SELECT partitions, retention_ms FROM topics WHERE name = ?", (name,)).fetchone()
            if row:
                return TopicInfo(name, *row)
            conn.execute("INSERT INTO topics (name, partitions, retention_ms) VALUES (?, ?, ?)",
                         (name, partitions, retention_ms))
            conn.executemany("INSERT INTO logs (topic, partition, next_offset) VALUES (?, ?, 0)",
                             [(name, p) for p in range(partitions)])
        return TopicInfo(name, partitions, retention_ms)

    def topics(self) -> dict[str, TopicInfo]:
        rows = self._db.query("SELECT name, partitions, retention_ms FROM topics ORDER BY name")
        return {name: TopicInfo(name, partitions, retention) for name, partitions, retention in rows}

    def producer(self) -> Producer:
        self._check_open()
        return SQLiteProducer(self._options)

    def consumer(self, group, topics: Sequence[str] = (), *, instance_id=None, auto_offset_reset="earliest") -> Consumer:
        self._check_open()
        return SQLiteConsumer(self._options, group, topics, instance_id, auto_offset_reset)

    def _check_open(self) -> None:
        if self._db.closed:
            raise BusClosedError(f"SQLite bus {self.url!r} is closed")

    def end_offsets(self, topic: str) -> dict[int, int]:
        rows = self._db.query("SELECT partition, next_offset FROM logs WHERE topic = ?", (topic,))
        if not rows:
            raise UnknownTopicError(topic)
        return dict(rows)

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        self.end_offsets(topic)  # unknown topic -> UnknownTopicError
        return dict(self._db.query(
            "SELECT partition, offset FROM group_offsets WHERE group_id = ? AND topic = ?", (group, topic)))

    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        out = {}
        for partition, end in sorted(self.end_offsets(topic).items()):
            # Timestamps need not be monotonic and have no index (it would slow every append), so
            # this scans the partition's batches for the first whose max_ts_ms reaches the time:
            # fine for tools like replay, not for a hot path.
            rows = self._db.query(
                "SELECT b.base_offset, b.records FROM batches b JOIN logs l ON l.id = b.log_id "
                "WHERE l.topic = ? AND l.partition = ? AND b.max_ts_ms >= ? ORDER BY b.base_offset LIMIT 1",
                (topic, partition, timestamp_ms),
            )
            if rows:
                base, blob = rows[0]
                end = next(base + i for i, entry in enumerate(_decode_batch(blob, topic, partition, base)) if entry[0] >= timestamp_ms)
            out[partition] = end
        return out

    def close(self) -> None:
        self._db.close()
