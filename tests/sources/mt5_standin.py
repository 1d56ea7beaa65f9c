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
* trading: ``symbol_info(symbol)`` -> :class:`SymbolInfo` (the fields trading reads; the real
  one has about 90 more), ``order_send(request)`` -> :class:`OrderSendResult` (with the
  request echoed as :class:`TradeRequest`) or None, ``positions_get(symbol=, group=, ticket=)``
  -> tuple of :class:`TradePosition`;
* the ``COPY_TICKS_*``, ``TICK_FLAG_*``, ``RES_*``, ``TRADE_ACTION_*``, ``ORDER_TYPE_*``,
  ``ORDER_FILLING_*``, ``ORDER_TIME_*``, ``POSITION_TYPE_*`` and ``TRADE_RETCODE_*``
  constants, with the real package's values.

It serves **real recorded ticks** (the OANDA files in ``../shared/data``) as a broker whose
server clock is ``server_utc_offset_s`` ahead of UTC would: ``time_msc`` = UTC ms + offset.

Behaviour that is not in the documentation is this module's assumption: the exact messages
of ``last_error()``, whether ``date_to`` is inclusive (here: to the second), and that an
unknown symbol makes ``symbol_select`` return False with ``RES_E_FAIL``. The trade server is
a hedging account: a deal without ``position`` opens a new position (its ticket and
identifier are the order's ticket), one with ``position`` closes (part of) it. Deals fill at
the current tick's ask (buy) or bid (sell); the request is checked for its action, volume
(min, max, step), filling mode (the symbol's ``filling_mode`` flags: 1 FOK, 2 IOC; neither
allows RETURN), price (within ``deviation`` points, else a requote) and position, in that
order. The ``comment`` texts are this module's.

Test controls, not part of the real API: :func:`serve` (what the "server" has, and which
login/password it accepts), :func:`release` (ticks arriving, for polling tests),
:func:`set_symbol` (a symbol's trading specification), :func:`script_retcode` (force the
result code of the next ``order_send``) and :func:`sent_requests`.
"""

from __future__ import annotations

from collections import deque, namedtuple
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

TRADE_ACTION_DEAL = 1
TRADE_ACTION_PENDING = 5
TRADE_ACTION_SLTP = 6
TRADE_ACTION_MODIFY = 7
TRADE_ACTION_REMOVE = 8
TRADE_ACTION_CLOSE_BY = 10

ORDER_TYPE_BUY = 0
ORDER_TYPE_SELL = 1

ORDER_FILLING_FOK = 0
ORDER_FILLING_IOC = 1
ORDER_FILLING_RETURN = 2

ORDER_TIME_GTC = 0
ORDER_TIME_DAY = 1
ORDER_TIME_SPECIFIED = 2
ORDER_TIME_SPECIFIED_DAY = 3

POSITION_TYPE_BUY = 0
POSITION_TYPE_SELL = 1

TRADE_RETCODE_REQUOTE = 10004
TRADE_RETCODE_REJECT = 10006
TRADE_RETCODE_CANCEL = 10007
TRADE_RETCODE_PLACED = 10008
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_DONE_PARTIAL = 10010
TRADE_RETCODE_ERROR = 10011
TRADE_RETCODE_TIMEOUT = 10012
TRADE_RETCODE_INVALID = 10013
TRADE_RETCODE_INVALID_VOLUME = 10014
TRADE_RETCODE_INVALID_PRICE = 10015
TRADE_RETCODE_INVALID_STOPS = 10016
TRADE_RETCODE_TRADE_DISABLED = 10017
TRADE_RETCODE_MARKET_CLOSED = 10018
TRADE_RETCODE_NO_MONEY = 10019
TRADE_RETCODE_PRICE_CHANGED = 10020
TRADE_RETCODE_PRICE_OFF = 10021
TRADE_RETCODE_INVALID_EXPIRATION = 10022
TRADE_RETCODE_ORDER_CHANGED = 10023
TRADE_RETCODE_TOO_MANY_REQUESTS = 10024
TRADE_RETCODE_CONNECTION = 10031
TRADE_RETCODE_INVALID_FILL = 10030
TRADE_RETCODE_POSITION_CLOSED = 10036

SymbolInfo = namedtuple(
    "SymbolInfo", "name visible digits point trade_contract_size volume_min volume_max volume_step filling_mode")
TradeRequest = namedtuple(
    "TradeRequest", "action magic order symbol volume price stoplimit sl tp deviation type type_filling type_time "
    "expiration comment position position_by")
OrderSendResult = namedtuple(
    "OrderSendResult", "retcode deal order volume price bid ask comment request_id retcode_external request")
TradePosition = namedtuple(
    "TradePosition", "ticket time time_msc time_update time_update_msc type magic identifier reason volume "
    "price_open sl tp price_current swap profit symbol comment external_id")

#: a standard FX contract: 100,000 units a lot, 0.01 to 500 lots, FOK fills
FX_SPEC = {"digits": 5, "point": 1e-5, "trade_contract_size": 100_000.0, "volume_min": 0.01,
           "volume_max": 500.0, "volume_step": 0.01, "filling_mode": 1}
_EMPTY_REQUEST = TradeRequest(
    action=0, magic=0, order=0, symbol="", volume=0.0, price=0.0, stoplimit=0.0, sl=0.0, tp=0.0, deviation=0,
    type=0, type_filling=0, type_time=0, expiration=0, comment="", position=0, position_by=0)
_COMMENTS = {
    TRADE_RETCODE_DONE: "Request executed", TRADE_RETCODE_DONE_PARTIAL: "Request executed partially",
    TRADE_RETCODE_REQUOTE: "Requote", TRADE_RETCODE_REJECT: "Request rejected",
    TRADE_RETCODE_INVALID: "Invalid request", TRADE_RETCODE_INVALID_VOLUME: "Invalid volume",
    TRADE_RETCODE_MARKET_CLOSED: "Market closed", TRADE_RETCODE_NO_MONEY: "No money",
    TRADE_RETCODE_PRICE_OFF: "No prices", TRADE_RETCODE_INVALID_FILL: "Unsupported filling mode",
    TRADE_RETCODE_POSITION_CLOSED: "Position doesn't exist",
}

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
        # the trade server
        self.specs: dict[str, SymbolInfo] = {s: SymbolInfo(name=s, visible=True, **FX_SPEC) for s in ticks}
        self.positions: dict[int, TradePosition] = {}
        self.next_ticket = 1_000_001
        self.scripted: deque[tuple[int, float | None] | tuple[int, str]] = deque()  # results, failures
        self.requests: list[dict] = []
        self.request_ids = 0


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


def set_symbol(symbol: str, **fields: object) -> None:
    """Change fields of ``symbol``'s :class:`SymbolInfo` (e.g. ``filling_mode=2``)."""
    _server.specs[symbol] = _server.specs[symbol]._replace(**fields)


def script_retcode(retcode: int, volume: float | None = None) -> None:
    """The next ``order_send`` that passes the request checks answers ``retcode`` (queued);
    DONE_PARTIAL fills ``volume`` lots."""
    _server.scripted.append((retcode, volume))


def script_failure(code: int, message: str) -> None:
    """The next ``order_send`` returns None with ``last_error() == (code, message)`` (queued
    with :func:`script_retcode`)."""
    _server.scripted.append((code, message))


def sent_requests() -> list[dict]:
    """Every request given to ``order_send``, as sent."""
    return list(_server.requests)


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


def symbol_info(symbol: str) -> SymbolInfo | None:
    if not _server.connected:
        return _fail(_NO_IPC, None)
    if symbol not in _server.specs:
        return _fail((RES_E_NOT_FOUND, f"Terminal: Symbol {symbol} not found"), None)
    return _ok(_server.specs[symbol])


def positions_get(symbol: str | None = None, group: str | None = None,
                  ticket: int | None = None) -> tuple[TradePosition, ...] | None:
    # ``group`` (a name pattern) is accepted and not applied: every symbol matches
    if not _server.connected:
        return _fail(_NO_IPC, None)
    return _ok(tuple(p for p in _server.positions.values()
                     if (symbol is None or p.symbol == symbol) and (ticket is None or p.ticket == ticket)))


def order_send(request: dict) -> OrderSendResult | None:
    if not _server.connected:
        return _fail(_NO_IPC, None)
    if not isinstance(request, dict) or not set(request) <= set(TradeRequest._fields):
        return _fail((RES_E_INVALID_PARAMS, "Terminal: Invalid params"), None)
    _server.requests.append(dict(request))
    echo = _EMPTY_REQUEST._replace(**request)
    spec = _server.specs.get(echo.symbol)
    tick = symbol_info_tick(echo.symbol) if spec is not None else None
    if tick is None:
        return _result(TRADE_RETCODE_PRICE_OFF, echo)
    retcode, volume = _check(echo, spec, tick)
    if retcode == TRADE_RETCODE_DONE and _server.scripted:
        retcode, scripted = _server.scripted.popleft()
        if isinstance(scripted, str):
            return _fail((retcode, scripted), None)
        volume = scripted if scripted is not None else volume
    if retcode not in (TRADE_RETCODE_DONE, TRADE_RETCODE_DONE_PARTIAL):
        return _ok(_result(retcode, echo, tick))
    price = tick.ask if echo.type == ORDER_TYPE_BUY else tick.bid
    order = _server.next_ticket
    _server.next_ticket += 2  # an order ticket, then its deal's
    if echo.position:
        held = _server.positions[echo.position]
        if held.volume - volume > 1e-9:
            _server.positions[echo.position] = held._replace(volume=round(held.volume - volume, 8))
        else:
            del _server.positions[echo.position]
    else:
        _server.positions[order] = TradePosition(
            ticket=order, time=tick.time, time_msc=tick.time_msc, time_update=tick.time,
            time_update_msc=tick.time_msc,
            type=POSITION_TYPE_BUY if echo.type == ORDER_TYPE_BUY else POSITION_TYPE_SELL, magic=echo.magic,
            identifier=order, reason=3, volume=volume, price_open=price, sl=echo.sl, tp=echo.tp,
            price_current=price, swap=0.0, profit=0.0, symbol=echo.symbol, comment=echo.comment, external_id="")
    return _ok(_result(retcode, echo, tick, deal=order + 1, order=order, volume=volume, price=price))


def _check(request: TradeRequest, spec: SymbolInfo, tick: Tick) -> tuple[int, float]:
    """The server's checks of a deal request: (TRADE_RETCODE_DONE, its volume) or the refusal."""
    volume = request.volume
    if request.action != TRADE_ACTION_DEAL or request.type not in (ORDER_TYPE_BUY, ORDER_TYPE_SELL):
        return TRADE_RETCODE_INVALID, 0.0
    steps = volume / spec.volume_step
    if not spec.volume_min <= volume <= spec.volume_max or abs(steps - round(steps)) > 1e-6:
        return TRADE_RETCODE_INVALID_VOLUME, 0.0
    allowed = {ORDER_FILLING_FOK} if spec.filling_mode & 1 else set()
    allowed |= {ORDER_FILLING_IOC} if spec.filling_mode & 2 else set()
    if request.type_filling not in (allowed or {ORDER_FILLING_RETURN}):
        return TRADE_RETCODE_INVALID_FILL, 0.0
    current = tick.ask if request.type == ORDER_TYPE_BUY else tick.bid
    if abs(request.price - current) > request.deviation * spec.point + 1e-12:
        return TRADE_RETCODE_REQUOTE, 0.0
    if request.position and request.position not in _server.positions:
        return TRADE_RETCODE_POSITION_CLOSED, 0.0
    return TRADE_RETCODE_DONE, volume


def _result(retcode: int, request: TradeRequest, tick: Tick | None = None, *, deal: int = 0, order: int = 0,
            volume: float = 0.0, price: float = 0.0) -> OrderSendResult:
    _server.request_ids += 1
    return OrderSendResult(
        retcode=retcode, deal=deal, order=order, volume=volume, price=price,
        bid=tick.bid if tick else 0.0, ask=tick.ask if tick else 0.0,
        comment=_COMMENTS.get(retcode, f"retcode {retcode}"), request_id=_server.request_ids,
        retcode_external=0, request=request)


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
