"""The two ways to reach ClickHouse, behind three primitives: run a command, insert rows,
query rows. The analytics store (:mod:`tradepipe.read.analytics`) writes every statement; a
backend only carries the text, so the SQL a ClickHouse server receives is the SQL the tests run
on chDB, character for character.

- :class:`ChdbBackend` (``chdb:///DIR``, ``chdb:////abs/DIR`` or ``chdb://:memory:``):
  ClickHouse embedded in this process (``chdb.session.Session``). chDB allows one data path
  per process and one process per data path, so the projector and the query API must share
  the process (``tradepipe api`` runs both), or use a server.
- :class:`ClickHouseServerBackend` (``clickhouse://user:password@host:8123/db``,
  ``clickhouses://`` for HTTPS): a server over HTTP through clickhouse-connect.

Rows travel as JSON lines both ways: an INSERT carries its rows in the statement's format
(``FORMAT JSONCompactEachRow``), a query names ``FORMAT JSONEachRow`` and the backend returns
the body as bytes. Query parameters are ClickHouse's own ``{name:Type}`` placeholders, bound
by the engine on both paths (chDB's ``params``, the server's ``param_<name>``); both read a
value as ClickHouse's escaped text, so the chDB backend escapes it as clickhouse-connect does.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from tradepipe.read.sql import IDENTIFIER, redacted

DEFAULT_DATABASE = "tradepipe"
SCHEMES = ("chdb", "clickhouse", "clickhouses")
_ESCAPED = re.compile(r"([\\'`\t\n])")


def escaped(value: str) -> str:
    """``value`` in ClickHouse's escaped text format (how a bound parameter is read)."""
    return _ESCAPED.sub(r"\\\1", value)


class AnalyticsURLError(ValueError):
    """An analytics URL that names no supported backend, or is malformed."""


class AnalyticsStoreError(RuntimeError):
    """ClickHouse refused a statement, or cannot be reached / opened."""


class ClickHouseBackend(ABC):
    """One connection to ClickHouse; safe to share between the threads of a process (the
    projector inserts while the API queries)."""

    url: str  # without a password: for messages

    @abstractmethod
    def command(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL)."""

    @abstractmethod
    def insert(self, statement: str, payload: bytes) -> None:
        """Run ``statement`` (``INSERT INTO ... FORMAT F``) with ``payload`` as its data in F."""

    @abstractmethod
    def query(self, sql: str, params: Mapping[str, str]) -> bytes:
        """The body of ``sql`` (which names its output FORMAT), ``params`` bound to its
        ``{name:Type}`` placeholders (values as ClickHouse parses them from text)."""

    def close(self) -> None:
        pass


class ChdbBackend(ClickHouseBackend):
    """ClickHouse embedded in this process through chDB, on the data directory ``path``
    (``:memory:`` for a throw-away one)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import chdb.session

        # chDB compares data paths as text: one spelling per directory
        self.path = str(path) if str(path) == ":memory:" else os.path.realpath(path)
        self.url = f"chdb://{self.path}" if self.path == ":memory:" else f"chdb:///{self.path}"
        try:
            self._session = chdb.session.Session(self.path)
        except RuntimeError as exc:
            raise AnalyticsStoreError(self._open_failure(str(exc))) from None

    def _open_failure(self, message: str) -> str:
        """chDB's startup errors, said plainly (what it reports is cryptic)."""
        held = re.search(r"already initialized with path '([^']*)'", message)
        if held:
            return (f"cannot open chDB data path {self.path}: this process already holds {held.group(1)}, "
                    "and chDB allows one data path per process")
        if "Error initializing EmbeddedServer" in message:
            return (f"cannot open chDB data path {self.path}: it is held by another process (chDB allows one "
                    "process per data path); stop that process, or share a ClickHouse server "
                    "(clickhouse://user:password@host:8123/db)")
        return f"cannot open chDB data path {self.path}: {message}"

    def _run(self, sql: str, params: Mapping[str, str] | None = None) -> bytes:
        try:
            bound = {name: escaped(value) for name, value in params.items()} if params else None
            return self._session.query(sql, "JSONEachRow", params=bound).bytes()
        except RuntimeError as exc:
            raise AnalyticsStoreError(f"{self.url}: {exc}") from None

    def command(self, sql: str) -> None:
        self._run(sql)

    def insert(self, statement: str, payload: bytes) -> None:
        # chDB has no separate data channel: the rows follow the statement, as in clickhouse-client
        self._run(f"{statement}\n{payload.decode()}")

    def query(self, sql: str, params: Mapping[str, str]) -> bytes:
        return self._run(sql, params)

    def close(self) -> None:
        self._session.close()


class ClickHouseServerBackend(ClickHouseBackend):
    """A ClickHouse server over HTTP (clickhouse-connect). Statements qualify every table with
    the store's database, so the client sends no default database."""

    def __init__(self, url: str, **client_options: object) -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError

        parts = urlsplit(url)
        self.url = redacted(url)
        self._errors = ClickHouseError
        try:
            self._client = clickhouse_connect.get_client(
                interface="https" if parts.scheme == "clickhouses" else "http",
                host=parts.hostname or "localhost",
                port=parts.port or (8443 if parts.scheme == "clickhouses" else 8123),
                username=unquote(parts.username or "default"),
                password=unquote(parts.password or ""),
                # one HTTP session would serialize the projector's inserts and the API's queries
                autogenerate_session_id=False,
                **client_options,
            )
        except ClickHouseError as exc:
            raise AnalyticsStoreError(f"cannot reach ClickHouse at {self.url}: {exc}") from None

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except self._errors as exc:
            raise AnalyticsStoreError(f"{self.url}: {exc}") from None

    def insert(self, statement: str, payload: bytes) -> None:
        try:
            self._client.command(statement, data=payload)  # the statement in the URL, rows in the body
        except self._errors as exc:
            raise AnalyticsStoreError(f"{self.url}: {exc}") from None

    def query(self, sql: str, params: Mapping[str, str]) -> bytes:
        try:
            return self._client.raw_query(sql, parameters=dict(params) or None)
        except self._errors as exc:
            raise AnalyticsStoreError(f"{self.url}: {exc}") from None

    def close(self) -> None:
        self._client.close()


def backend_from_url(url: str) -> tuple[ClickHouseBackend, str]:
    """The backend a URL names and the database the store keeps its tables in:

    - ``chdb:///relative/DIR`` / ``chdb:////absolute/DIR`` (the bus's SQLAlchemy convention)
      or ``chdb://:memory:``, with ``?database=NAME`` (default ``tradepipe``);
    - ``clickhouse://user:password@host:8123/NAME`` (``clickhouses://`` for HTTPS); the
      database is the path (default ``tradepipe``).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise AnalyticsURLError(
            f"bad analytics URL {redacted(url)!r}: expected chdb:///DIR (embedded ClickHouse), chdb://:memory: "
            "or clickhouse://user:password@host:8123/db (a ClickHouse server)")
    parts = urlsplit(url)
    if scheme == "chdb":
        options = dict(parse_qsl(parts.query))
        unknown = set(options) - {"database"}
        if unknown:
            raise AnalyticsURLError(f"bad chDB URL {url!r}: unknown option(s) {sorted(unknown)}; only ?database=NAME")
        rest = url.split("://", 1)[1].split("?", 1)[0]
        if rest == ":memory:":
            path = ":memory:"
        elif rest.startswith("/") and len(rest) > 1:
            path = rest[1:]
        else:
            raise AnalyticsURLError(
                f"bad chDB URL {url!r}: expected chdb:///relative/DIR, chdb:////absolute/DIR or chdb://:memory:")
        database = _database(options.get("database") or DEFAULT_DATABASE, url)
        if path != ":memory:":
            Path(path).mkdir(parents=True, exist_ok=True)
        return ChdbBackend(path), database
    if not parts.hostname:
        raise AnalyticsURLError(f"bad ClickHouse URL {redacted(url)!r}: no host; e.g. clickhouse://default:@127.0.0.1:8123/tradepipe")
    database = _database(parts.path.strip("/") or DEFAULT_DATABASE, redacted(url))
    return ClickHouseServerBackend(url), database


def _database(name: str, url: str) -> str:
    if not IDENTIFIER.fullmatch(name):
        raise AnalyticsURLError(f"bad database name {name!r} in {url!r}: letters, digits and _ only")
    return name
