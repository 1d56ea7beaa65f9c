"""A STAND-IN for the ``MetaTrader5`` package, for tests only.

The real package needs a running MetaTrader 5 terminal, which needs Windows, so it cannot run
here. This module has the real package's function names, signatures and return shapes, as
documented by MetaQuotes (https://www.mql5.com/en/docs/python_metatrader5):

* ``initialize(path=None, *, login=, password=, server=, timeout=, portable=)`` -> bool;
  ``shutdown()``; ``last_error()`` -> ``(code, message)`` with the ``RES_*`` codes;
* ``symbol_select(symbol, enable=True)`` -> bool;
* ``copy_ticks_from(symbol, date_from, count, flags)`` and
  ``copy_ticks_range(symbol, date_from, date_to, flags)`` -> numpy structured array of
  :data:`TICK_DTYPE` (the real package's dtype), or None on error; ``date_from``/``date_to``
  are datetimes or epoch seconds, on the server clock, and are used to the second;
* ``symbol_info_tick(symbol)`` -> :class:`Tick` named tuple, or None;
* the ``COPY_TICKS_*``, ``TICK_FLAG_*`` and ``RES_*`` constants.

It serves **real recorded ticks** (the OANDA files in ``../shared/data``) as a broker whose
server clock is ``server_utc_offset_s`` ahead of UTC would: ``time_msc`` = UTC ms + offset.

Behaviour that is not in the documentation is this module's assumption: the exact messages
of ``last_error()``, whether ``date_to`` is inclusive (here: to the second), and that an
unknown symbol makes ``symbol_select`` return False with ``RES_E_FAIL``.

Test controls, not part of the real API: :func:`serve` (what the "server" has, and which
login/password it accepts) and :func:`release` (ticks arriving, for polling tests).
"""

from __future__ import annotations

from collections import namedtuple
from datetime import datetime
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np

from tradepipe.sources.files import RawTick, read_ticks

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"

COPY_TICKS_ALL = -1
COPY_TICKS_INFO = 1
COPY_TICKS_TRADE = 2

TICK_FLAG_BID = 2
TICK_FLAG_ASK = 4
TICK_FLAG_LAST = 8
TICK_FLAG_VOLUME = 16
TICK_FLAG_BUY = 32
TICK_FLAG_SELL = 64

RES_S_OK = 1
RES_E_FAIL = -1
RES_E_INVALID_PARAMS = -2
RES_E_NOT_FOUND = -4
RES_E_AUTH_FAILED = -6
RES_E_INTERNAL_FAIL_CONNECT = -10004

TICK_DTYPE = np.dtype([
    ("time", "<i8"), ("bid", "<f8"), ("ask", "<f8"), ("last", "<f8"), ("volume", "<u8"),
    ("time_msc", "<i8"), ("flags", "<u4"), ("volume_real", "<f8"),
])
T = TypeVar("T")
Tick = namedtuple("Tick", "time bid ask last volume time_msc flags volume_real")

_NO_IPC = (RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection")
_FLAG_FILTERS = {  # COPY_TICKS_ALL takes every tick
    COPY_TICKS_INFO: TICK_FLAG_BID | TICK_FLAG_ASK,
    COPY_TICKS_TRADE: TICK_FLAG_LAST | TICK_FLAG_VOLUME,
}


class _Server:
    def __init__(self, ticks: dict[str, np.ndarray], visible: dict[str, int],
                 login: int | None, password: str | None) -> None:
        self.ticks = ticks
        self.visible = visible
        self.login = login
        self.password = password
        self.connected = False
        self.error: tuple[int, str] = (RES_S_OK, "Success")


_server = _Server({}, {}, None, None)


# --- test controls (not in the real package) -------------------------------------------------

@lru_cache(maxsize=None)
def real_ticks(file_name: str, count: int) -> tuple[RawTick, ...]:
    """The first ``count`` ticks of a file in ``../shared/data``."""
    return tuple(islice((t for t in read_ticks(DATA_DIR / file_name) if isinstance(t, RawTick)), count))


def as_server_ticks(ticks: tuple[RawTick, ...], server_utc_offset_s: int) -> np.ndarray:
    """Recorded UTC ticks as the terminal would store them: server-clock times and bid/ask
    change flags."""
    array = np.zeros(len(ticks), TICK_DTYPE)
    array["time_msc"] = [t.ts_ms + server_utc_offset_s * 1000 for t in ticks]
    array["time"] = array["time_msc"] // 1000
    array["bid"] = [t.bid for t in ticks]
    array["ask"] = [t.ask for t in ticks]
    array["volume_real"] = [t.volume for t in ticks]
    array["volume"] = array["volume_real"].astype(np.uint64)
    bid_changed = np.diff(array["bid"], prepend=0.0) != 0
    ask_changed = np.diff(array["ask"], prepend=0.0) != 0
    array["flags"] = np.where(bid_changed, TICK_FLAG_BID, 0) | np.where(ask_changed, TICK_FLAG_ASK, 0)
    return array


def serve(ticks: dict[str, np.ndarray], *, visible: dict[str, int] | None = None,
          login: int | None = None, password: str | None = None) -> None:
    """Reset the terminal: disconnected, holding ``ticks`` per symbol of which the first
    ``visible[symbol]`` (default: all) have arrived; ``login``/``password`` when set are the
    only credentials ``initialize`` accepts."""
    global _server
    shown = {symbol: len(array) for symbol, array in ticks.items()}
    shown.update(visible or {})
    _server = _Server(ticks, shown, login, password)


def release(symbol: str, count: int) -> None:
    """``count`` more ticks of ``symbol`` arrive at the terminal."""
    _server.visible[symbol] = min(_server.visible[symbol] + count, len(_server.ticks[symbol]))


def is_connected() -> bool:
    return _server.connected


# --- the MetaTrader5 API -----------------------------------------------------------------

def initialize(path: str | None = None, *, login: int | None = None, password: str | None = None,
               server: str | None = None, timeout: int | None = None, portable: bool = False) -> bool:
    if path is not None and not Path(path).exists():
        return _fail((-10003, "IPC initialize failed, MetaTrader 5 x64 not found"), False)
    if _server.login is not None and (login, password) != (_server.login, _server.password):
        return _fail((RES_E_AUTH_FAILED, "Terminal: Authorization failed"), False)
    _server.connected = True
    _server.error = (RES_S_OK, "Success")
    return True


def shutdown() -> None:
    _server.connected = False


def last_error() -> tuple[int, str]:
    return _server.error


def symbol_select(symbol: str, enable: bool = True) -> bool:
    if not _server.connected:
        return _fail(_NO_IPC, False)
    if symbol not in _server.ticks:
        return _fail((RES_E_FAIL, "Terminal: Call failed"), False)
    return _ok(True)


def symbol_info_tick(symbol: str) -> Tick | None:
    ticks = _visible(symbol)
    if ticks is None or len(ticks) == 0:
        return None
    return _ok(Tick(*ticks[-1].tolist()))


def copy_ticks_from(symbol: str, date_from: datetime | int | float, count: int, flags: int) -> np.ndarray | None:
    ticks = _visible(symbol)
    if ticks is None:
        return None
    if count < 1 or not _valid_flags(flags):
        return _fail((RES_E_INVALID_PARAMS, "Terminal: Invalid params"), None)
    first = int(np.searchsorted(ticks["time"], _seconds(date_from), "left"))
    return _ok(_with_flags(ticks[first:], flags)[:count].copy())


def copy_ticks_range(symbol: str, date_from: datetime | int | float, date_to: datetime | int | float,
                     flags: int) -> np.ndarray | None:
    ticks = _visible(symbol)
    if ticks is None:
        return None
    low, high = _seconds(date_from), _seconds(date_to)
    if high < low or not _valid_flags(flags):
        return _fail((RES_E_INVALID_PARAMS, "Terminal: Invalid params"), None)
    first = int(np.searchsorted(ticks["time"], low, "left"))
    end = int(np.searchsorted(ticks["time"], high, "right"))  # date_to counts to its second's end
    return _ok(_with_flags(ticks[first:end], flags).copy())


# --- internals ---------------------------------------------------------------------------

def _visible(symbol: str) -> np.ndarray | None:
    if not _server.connected:
        return _fail(_NO_IPC, None)
    if symbol not in _server.ticks:
        return _fail((RES_E_NOT_FOUND, f"Terminal: Symbol {symbol} not found"), None)
    return _server.ticks[symbol][: _server.visible[symbol]]


def _with_flags(ticks: np.ndarray, flags: int) -> np.ndarray:
    if flags == COPY_TICKS_ALL:  # also a tick that repeats the previous quote
        return ticks
    return ticks[(ticks["flags"] & _FLAG_FILTERS[flags]) != 0]


def _valid_flags(flags: int) -> bool:
    return flags == COPY_TICKS_ALL or flags in _FLAG_FILTERS


def _seconds(moment: datetime | int | float) -> int:
    # The package turns a datetime into epoch seconds with .timestamp() (so an aware one is
    # taken at its instant); numbers are already epoch seconds.
    return int(moment.timestamp()) if isinstance(moment, datetime) else int(moment)


def _ok(value: T) -> T:
    _server.error = (RES_S_OK, "Success")
    return value


def _fail(error: tuple[int, str], value: T) -> T:
    _server.error = error
    return value
