"""The SQL layer of the transactional read store: one dialect over SQLite (stdlib ``sqlite3``)
and PostgreSQL (psycopg 3), chosen by URL, with transactions that survive a PostgreSQL restart.

SQL is written once, in the subset both engines accept: ``%s`` placeholders (turned into
SQLite's ``?``), ``INSERT ... ON CONFLICT ... DO UPDATE``, row-value comparisons, the types
TEXT / BIGINT / INTEGER / DOUBLE PRECISION. Times are stored as fixed-width ISO-8601 UTC text
(:func:`iso`), so they compare as strings and read the same in both.

URLs:

- ``sqlite:///relative.db`` / ``sqlite:////absolute/path.db`` (the bus's convention);
- ``postgresql://user[:password]@host[:port]/db[?schema=NAME&application_name=...]``: ``schema``
  keeps the tables in their own PostgreSQL schema (created if missing), so tenants and
  parallel tests do not collide; every other query parameter goes to libpq.

:meth:`Database.atomic` runs a unit of work in one transaction. When PostgreSQL goes away
(the server restarts, an administrator terminates the backend, the network drops) the
transaction is rolled back by the server, the connection is reopened with exponential backoff
and the whole unit of work runs again, so nothing is half-applied and nothing is lost.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import tenacity

log = logging.getLogger(__name__)

UTC = timezone.utc
T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]
CONNECT_TIMEOUT_S = 5
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # a plain SQL name: schemas, databases


class StoreError(Exception):
    """Base of the read store's errors (what a command reports and exits on)."""


class StoreURLError(StoreError, ValueError):
    """A store URL that names no supported database, or is malformed."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached (at start, or for longer than the reconnect timeout)."""


class _ConnectionLost(Exception):
    """PostgreSQL went away during a transaction: reconnect and run it again."""


def iso(at: datetime) -> str:
    """``at`` as stored: UTC, microseconds, fixed width (so text order is time order)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


@functools.lru_cache(maxsize=256)
def _qmarks(sql: str) -> str:
    return sql.replace("%s", "?")


class Transaction:
    """The statements of one transaction (SQL in the shared dialect)."""

    def __init__(self, cursor: Any, translate: Callable[[str], str]) -> None:
        self._cursor = cursor
        self._translate = translate

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._translate(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self._cursor.executemany(self._translate(sql), rows)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        self._cursor.execute(self._translate(sql), params)
        return [tuple(row) for row in self._cursor.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None


class Database(ABC):
    """One connection to the store's database, shared by the threads of a process (a lock
    serializes transactions: a projector writes while the API reads)."""

    dialect: Dialect

    def __init__(self, url: str, *, reconnect_timeout_s: float = 60.0) -> None:
        self.url = url
        self.reconnect_timeout_s = reconnect_timeout_s
        self.reconnects = 0
        self._lock = threading.RLock()

    # -- the unit of work -------------------------------------------------------------------
    def atomic(self, work: Callable[[Transaction], T], *, write: bool = True) -> T:
        """``work(tx)`` in one transaction, committed when it returns. On PostgreSQL, a lost
        connection reopens and ``work`` runs again from the start (it must not have effects
        outside the transaction); :class:`StoreUnavailableError` after ``reconnect_timeout_s``.
        ``write=False``: ``work`` only reads (SQLite then takes no write lock)."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_ConnectionLost),
            wait=tenacity.wait_exponential(multiplier=0.05, max=2.0),
            stop=tenacity.stop_after_delay(self.reconnect_timeout_s),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt, self.transaction(write=write) as tx:
                    result = work(tx)
        except _ConnectionLost as exc:
            raise StoreUnavailableError(
                f"read store {redacted(self.url)} unreachable for {self.reconnect_timeout_s:g} s: {exc}") from None
        return result

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one read-only statement."""
        return self.atomic(lambda tx: tx.all(sql, params), write=False)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        log.warning("read store %s: %s; reconnecting (attempt %d)", redacted(self.url),
                    state.outcome.exception() if state.outcome else "?", state.attempt_number)

    @abstractmethod
    def transaction(self, *, write: bool = True) -> AbstractContextManager[Transaction]:
        """One attempt at a transaction: commit on exit, roll back on an exception."""

    @abstractmethod
    def close(self) -> None:
        ...


class SQLiteDatabase(Database):
    dialect: Dialect = "sqlite"

    def __init__(self, url: str, path: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = path
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT)
            self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")  # readers (the CLI's status) never block the projector
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open read store {url}: {exc}") from None
        # NORMAL in WAL: a commit survives a crash of the process (not of the machine)
        self._conn.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        with self._lock:
            conn = self._conn
            # IMMEDIATE: take the write lock at once, so a read-then-write never fails to upgrade;
            # a reader's snapshot needs no lock (WAL)
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Transaction(conn.cursor(), _qmarks)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


class PostgresDatabase(Database):
    dialect: Dialect = "postgresql"

    def __init__(self, url: str, conninfo: str, schema: str | None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._conninfo = conninfo
        self.schema = schema
        self._conn: Any = None
        try:
            self._connect()
        except Exception as exc:  # psycopg.OperationalError, a bad schema ...
            raise StoreUnavailableError(f"cannot connect to read store {redacted(url)}: {exc}".strip()) from None

    def _connect(self) -> None:
        import psycopg

        conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        if self.schema is not None:
            try:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            except psycopg.errors.UniqueViolation:  # another process created it just now
                pass
            conn.execute(f'SET search_path TO "{self.schema}"')
        self._conn = conn

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        import psycopg

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self.reconnects += 1
                    self._connect()
                with self._conn.transaction(), self._conn.cursor() as cursor:
                    yield Transaction(cursor, str)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # the server or the network went away (AdminShutdown is an OperationalError):
                # the transaction was rolled back with the connection; start again on a new one
                if self._conn is not None and (self._conn.closed or self._conn.broken):
                    self._conn.close()
                    self._conn = None
                raise _ConnectionLost(str(exc).strip() or type(exc).__name__) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def open_database(url: str, *, reconnect_timeout_s: float = 60.0) -> Database:
    """The database ``url`` names, connected; :class:`StoreURLError` for a URL naming no
    supported database, :class:`StoreUnavailableError` if it cannot be reached."""
    if "://" not in url:
        raise StoreURLError(f"bad read store URL {url!r}: expected sqlite:///file.db or postgresql://user@host:port/db")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
        if not path:
            raise StoreURLError(f"bad read store URL {url!r}: expected sqlite:///relative.db or sqlite:////absolute.db")
        return SQLiteDatabase(url, path, reconnect_timeout_s=reconnect_timeout_s)
    if scheme in ("postgresql", "postgres"):
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", None)
        if schema is not None and not IDENTIFIER.fullmatch(schema):
            raise StoreURLError(f"bad read store URL {redacted(url)}: schema {schema!r} is not a plain SQL identifier")
        conninfo = parts._replace(scheme="postgresql", query=urlencode(query)).geturl()
        return PostgresDatabase(url, conninfo, schema, reconnect_timeout_s=reconnect_timeout_s)
    raise StoreURLError(f"bad read store URL {redacted(url)}: unknown scheme {scheme!r}; "
                        "supported: sqlite:///file.db, postgresql://user@host:port/db")


__all__ = ["Database", "Dialect", "StoreError", "StoreURLError", "StoreUnavailableError", "Transaction", "iso", "open_database",
           "redacted"]
