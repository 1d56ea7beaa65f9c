"""MetaTrader 5 tick source (R4.1), written against the ``MetaTrader5`` package API.

``terminal`` is the ``MetaTrader5`` module itself (Windows only: the package talks to a
running MT5 terminal over IPC) or an ``mt5linux.MetaTrader5(host, port)`` connection (the
same functions over RPyC, to a terminal under Wine). The calls used:

* ``initialize(path, login=, password=, server=, timeout=)`` -> bool, ``shutdown()``;
* ``symbol_select(symbol, True)`` -> bool (False for a symbol the broker does not have);
* ``copy_ticks_range(symbol, date_from, date_to, flags)`` and
  ``copy_ticks_from(symbol, date_from, count, flags)`` -> numpy structured array with fields
  ``time, bid, ask, last, volume, time_msc, flags, volume_real``, in time order;
* ``symbol_info_tick(symbol)`` -> ``Tick(time, bid, ask, last, volume, time_msc, flags,
  volume_real)``;
* on failure a call returns None (or False) and ``last_error()`` gives ``(code, message)``;
  :class:`MT5Error` carries both.

**Server time.** MT5 tick times (``time_msc``, ms since 1970) are the broker's *trade server*
wall clock written as if it were UTC, and the ``date_from``/``date_to`` arguments are read
on the same clock. Give the server's offset from UTC as ``server_utc_offset_s`` (e.g. 10800
for a UTC+3 server): tick times are converted to UTC by subtracting it, and requested UTC
ranges are shifted by it. One fixed offset is assumed; for a broker whose server follows
daylight saving time, use one source per DST period.

**Tests.** The MT5 terminal cannot run on Linux CI, so ``tests/sources/test_mt5.py`` checks
this adapter against ``tests/sources/mt5_standin.py``, a stand-in module with the real
package's function names, signatures and return shapes serving real recorded ticks. It has
not been run against a live terminal here.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from itertools import repeat
from operator import attrgetter
from types import ModuleType
from typing import Any

import numpy as np

from tradepipe.sources.files import RawTick, iso_to_ms, ms_since_epoch

SOURCE = "mt5"
DAY_MS = 86_400_000
_TICK_TIME = attrgetter("ts_ms")


class MT5Error(RuntimeError):
    """A MetaTrader5 call failed; ``code`` and ``message`` are its ``last_error()``."""

    def __init__(self, call: str, code: int, message: str, context: str = "") -> None:
        self.call, self.code, self.message = call, code, message
        detail = f" ({context})" if context else ""
        super().__init__(f"MetaTrader5 {call} failed{detail}: last_error {code} {message!r}")


def import_metatrader5() -> ModuleType:
    """The ``MetaTrader5`` package, or an ImportError saying where it exists and what else works."""
    try:
        import MetaTrader5
    except ImportError as error:
        raise ImportError(
            "the MetaTrader5 package is not installed; it exists only for Windows "
            "(pip install MetaTrader5, next to a running MetaTrader 5 terminal). On Linux, run "
            "the terminal and mt5linux's server under Wine and pass "
            "terminal=mt5linux.MetaTrader5(host, port)"
        ) from error
    return MetaTrader5


class _Cursor:
    """Where polling of one symbol stands, in server ms: every tick before ``ms`` and the
    first ``seen`` ticks at ``ms`` have been yielded (ticks can share a millisecond, and one
    can arrive after a poll has already returned others of its millisecond)."""

    __slots__ = ("ms", "seen")

    def __init__(self, ms: int, seen: int) -> None:
        self.ms = ms
        self.seen = seen

    def advance(self, times: np.ndarray) -> None:
        """Take in a time-ordered response that started at or before ``ms``."""
        if len(times) == 0 or times[-1] < self.ms:
            return
        last = int(times[-1])
        at_last = len(times) - int(np.searchsorted(times, last, "left"))
        if last == self.ms:
            self.seen = max(self.seen, at_last)
        else:
            self.ms, self.seen = last, at_last

    def first_new(self, times: np.ndarray) -> int:
        """Index of the first tick of a response (starting at or before ``ms``) not yet seen."""
        at_cursor = int(np.searchsorted(times, self.ms, "left"))
        return min(at_cursor + self.seen, int(np.searchsorted(times, self.ms, "right")))


class MT5Source:
    """Ticks of ``symbols`` from a MetaTrader 5 terminal, as :class:`RawTick` in UTC.

    ``history(start, end)`` reads recorded ticks; ``poll()`` returns the ticks that arrived
    since the last call (``copy_ticks_from`` from the last seen time, deduplicating the
    boundary millisecond); ``stream()`` polls forever; ``latest(symbol)`` is the current
    quote (``symbol_info_tick``). Multi-symbol results are merged in time order.

    ``terminal`` defaults to ``import MetaTrader5`` (ImportError with a hint if missing); see
    the module doc for mt5linux and for ``server_utc_offset_s``. ``path``, ``login``,
    ``password``, ``server`` and ``timeout_ms`` go to ``initialize()`` when given.
    ``flags`` defaults to ``COPY_TICKS_ALL``. ``position`` counts the ticks of each symbol
    from 1 and ``source`` is ``"mt5"``; ``line`` is empty (there is no row text).

    Use as a context manager (``connect()`` on entry, ``close()`` = ``shutdown()`` on exit).
    Tested only against the stand-in module ``tests/sources/mt5_standin.py``: the real
    terminal needs Windows.
    """

    def __init__(
        self,
        terminal: Any = None,
        symbols: Sequence[str] = ("EURUSD",),
        *,
        server_utc_offset_s: int = 0,
        path: str | None = None,
        login: int | None = None,
        password: str | None = None,
        server: str | None = None,
        timeout_ms: int | None = None,
        flags: int | None = None,
        poll_count: int = 100_000,
        history_window_ms: int = DAY_MS,
    ) -> None:
        if not symbols:
            raise ValueError("MT5Source needs at least one symbol")
        if poll_count < 1 or history_window_ms < 1:
            raise ValueError("poll_count and history_window_ms must be >= 1")
        self.terminal = terminal if terminal is not None else import_metatrader5()
        self.symbols = tuple(symbols)
        self.offset_ms = int(server_utc_offset_s) * 1000
        self.flags = self.terminal.COPY_TICKS_ALL if flags is None else flags
        self.poll_count = poll_count
        self.history_window_ms = history_window_ms
        self._initialize_args = (path,) if path else ()
        self._initialize_kwargs = {
            key: value
            for key, value in (("login", login), ("password", password), ("server", server),
                               ("timeout", timeout_ms))
            if value is not None
        }
        self._cursors: dict[str, _Cursor] = {}
        self._counts = dict.fromkeys(self.symbols, 0)
        self._connected = False

    # --- connection ----------------------------------------------------------------------

    def connect(self) -> None:
        """``initialize()`` the terminal and select the symbols in Market Watch."""
        if not self.terminal.initialize(*self._initialize_args, **self._initialize_kwargs):
            raise self._error("initialize()", "cannot connect to the MetaTrader 5 terminal")
        self._connected = True
        for symbol in self.symbols:
            if not self.terminal.symbol_select(symbol, True):
                self.close()
                raise self._error(
                    f"symbol_select({symbol!r}, True)",
                    f"symbol {symbol!r} not found on this broker or cannot be shown in Market Watch",
                )

    def close(self) -> None:
        """``shutdown()`` the connection (once)."""
        if self._connected:
            self._connected = False
            self.terminal.shutdown()

    def __enter__(self) -> MT5Source:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- history -------------------------------------------------------------------------

    def history(self, start: datetime | str | int, end: datetime | str | int) -> Iterator[RawTick]:
        """The ticks with UTC time in ``[start, end)`` (datetime, ISO string or epoch ms),
        fetched ``history_window_ms`` at a time (bounded memory) and merged across symbols.
        A later ``poll()`` continues after the last tick returned here."""
        start_ms, end_ms = _utc_ms(start), _utc_ms(end)
        for symbol in self.symbols:
            self._cursors[symbol] = _Cursor(start_ms + self.offset_ms, 0)
        for window_start in range(start_ms, end_ms, self.history_window_ms):
            window_end = min(window_start + self.history_window_ms, end_ms)
            yield from heapq.merge(
                *(self._range(symbol, window_start, window_end) for symbol in self.symbols),
                key=_TICK_TIME,
            )

    def _range(self, symbol: str, start_ms: int, end_ms: int) -> list[RawTick]:
        low, high = start_ms + self.offset_ms, end_ms + self.offset_ms
        # Whole seconds, widened: how the terminal rounds sub-second bounds is not documented,
        # so the exact [low, high) cut is made here on time_msc.
        date_from, date_to = _server_datetime(low // 1000), _server_datetime(-(-high // 1000))
        ticks = self.terminal.copy_ticks_range(symbol, date_from, date_to, self.flags)
        if ticks is None:
            raise self._error(
                f"copy_ticks_range({symbol!r}, {date_from:%Y-%m-%d %H:%M:%S}, "
                f"{date_to:%Y-%m-%d %H:%M:%S}, {self.flags})",
                "dates on the server clock",
            )
        times = ticks["time_msc"]
        ticks = ticks[(times >= low) & (times < high)]
        self._cursors[symbol].advance(ticks["time_msc"])
        return self._raw_ticks(symbol, ticks)

    # --- live ----------------------------------------------------------------------------

    def poll(self) -> list[RawTick]:
        """The ticks that arrived since the last ``poll()`` (or ``history()``), up to
        ``poll_count`` per symbol. The first poll of a symbol starts at its current quote."""
        return list(heapq.merge(*(self._poll(symbol) for symbol in self.symbols), key=_TICK_TIME))

    def _poll(self, symbol: str) -> list[RawTick]:
        cursor = self._cursors.get(symbol)
        if cursor is None:
            cursor = self._cursors[symbol] = _Cursor(self._current_tick(symbol).time_msc, 0)
        date_from = _server_datetime(cursor.ms // 1000)
        ticks = self.terminal.copy_ticks_from(symbol, date_from, self.poll_count, self.flags)
        if ticks is None:
            raise self._error(
                f"copy_ticks_from({symbol!r}, {date_from:%Y-%m-%d %H:%M:%S}, {self.poll_count}, "
                f"{self.flags})", "dates on the server clock",
            )
        times = ticks["time_msc"]
        fresh = ticks[cursor.first_new(times):]
        cursor.advance(times)
        return self._raw_ticks(symbol, fresh)

    def stream(self, poll_interval_s: float = 0.25) -> Iterator[RawTick]:
        """Poll forever; sleep ``poll_interval_s`` (wall clock: live feeds only) after a poll
        that did not fill ``poll_count`` for any symbol."""
        while True:
            ticks = self.poll()
            yield from ticks
            if len(ticks) < self.poll_count:
                time.sleep(poll_interval_s)

    def latest(self, symbol: str) -> RawTick:
        """The symbol's current quote (``symbol_info_tick``)."""
        tick = self._current_tick(symbol)
        self._counts[symbol] += 1
        return RawTick(symbol, int(tick.time_msc) - self.offset_ms, float(tick.bid), float(tick.ask),
                       float(tick.volume_real), self._counts[symbol], SOURCE)

    def _current_tick(self, symbol: str) -> Any:
        tick = self.terminal.symbol_info_tick(symbol)
        if tick is None:
            raise self._error(f"symbol_info_tick({symbol!r})")
        return tick

    # --- helpers -------------------------------------------------------------------------

    def _raw_ticks(self, symbol: str, ticks: np.ndarray) -> list[RawTick]:
        first = self._counts[symbol] + 1
        self._counts[symbol] += len(ticks)
        return list(map(
            RawTick, repeat(symbol), (ticks["time_msc"] - self.offset_ms).tolist(),
            ticks["bid"].tolist(), ticks["ask"].tolist(), ticks["volume_real"].tolist(),
            range(first, first + len(ticks)), repeat(SOURCE),
        ))

    def _error(self, call: str, context: str = "") -> MT5Error:
        code, message = self.terminal.last_error()
        return MT5Error(call, int(code), str(message), context)


def _utc_ms(moment: datetime | str | int) -> int:
    if isinstance(moment, datetime):
        return ms_since_epoch(moment)
    if isinstance(moment, str):
        return iso_to_ms(moment)
    return int(moment)


def _server_datetime(seconds: int) -> datetime:
    """An aware datetime for server-clock seconds: the package turns it into the same epoch
    seconds, and mt5linux needs a datetime (it calls ``astimezone()`` on it)."""
    return datetime.fromtimestamp(seconds, timezone.utc)


__all__ = ["MT5Error", "MT5Source", "import_metatrader5"]
