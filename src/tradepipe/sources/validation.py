"""Tick validation (R4.2): reject bad quotes with a reason code, never raise.

Checks, in order (the first failing one is the reason):

=================  ===============================================================
``not_finite``     bid or ask is NaN or infinite
``non_positive``   bid or ask <= 0
``crossed``        ask < bid
``locked``         ask == bid, only when ``allow_locked=False``
``out_of_order``   earlier than the symbol's last accepted tick
``duplicate``      same time, bid and ask as the last accepted tick (ticks sharing a
                   millisecond with different prices are real and kept)
``jump``           mid moved more than ``max_jump`` (relative) from the last accepted mid
=================  ===============================================================

A genuine gap (say a weekend open far from Friday's close) must not reject the rest of the
stream, so jumps are confirmed by agreement: when ``gap_confirmations`` (3) consecutive
jumping ticks agree with each other within ``max_jump``, the last of them is accepted and
becomes the new reference level (the earlier ones have already been rejected as ``jump``).
Ticks rejected for another reason in between neither break nor extend such a run.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

NOT_FINITE = "not_finite"
NON_POSITIVE = "non_positive"
CROSSED = "crossed"
LOCKED = "locked"
OUT_OF_ORDER = "out_of_order"
DUPLICATE = "duplicate"
JUMP = "jump"
REJECT_CODES = (NOT_FINITE, NON_POSITIVE, CROSSED, LOCKED, OUT_OF_ORDER, DUPLICATE, JUMP)

_INF = math.inf


class Rejection(NamedTuple):
    code: str  # one of REJECT_CODES
    message: str  # for people, e.g. "crossed quote ask 1.1 < bid 1.2"


class _SymbolState:
    """The last accepted tick of a symbol, and the mids of the current run of jumps."""

    __slots__ = ("ts_ms", "bid", "ask", "mid", "jump_run")

    def __init__(self, ts_ms: int, bid: float, ask: float, jump_run: list[float]) -> None:
        self.ts_ms = ts_ms
        self.bid = bid
        self.ask = ask
        self.mid = (bid + ask) * 0.5
        self.jump_run = jump_run


class TickValidator:
    """Validates the ticks of any number of symbols, each against its own last accepted tick.

    ``check`` returns None for an accepted tick (and remembers it) or a :class:`Rejection`.
    """

    def __init__(
        self, max_jump: float = 0.05, allow_locked: bool = True, gap_confirmations: int = 3
    ) -> None:
        if max_jump <= 0 or gap_confirmations < 1:
            raise ValueError("max_jump must be > 0 and gap_confirmations >= 1")
        self.max_jump = max_jump
        self.allow_locked = allow_locked
        self.gap_confirmations = gap_confirmations
        self._states: dict[str, _SymbolState] = {}

    def check(self, symbol: str, ts_ms: int, bid: float, ask: float) -> Rejection | None:
        # One chained comparison per price covers NaN, inf and <= 0 on the hot path.
        if not (0.0 < bid < _INF and 0.0 < ask < _INF):
            return _bad_price(bid, ask)
        if ask <= bid:
            if ask < bid:
                return Rejection(CROSSED, f"crossed quote ask {ask} < bid {bid}")
            if not self.allow_locked:
                return Rejection(LOCKED, f"locked quote ask {ask} == bid {bid}")
        state = self._states.get(symbol)
        if state is None:
            self._states[symbol] = _SymbolState(ts_ms, bid, ask, [])
            return None
        if ts_ms < state.ts_ms:
            return Rejection(
                OUT_OF_ORDER, f"out of order: {ts_ms} ms is before the last tick at {state.ts_ms} ms"
            )
        if ts_ms == state.ts_ms and bid == state.bid and ask == state.ask:
            return Rejection(DUPLICATE, f"duplicate of the last tick at {ts_ms} ms ({bid}/{ask})")
        mid = (bid + ask) * 0.5
        if abs(mid - state.mid) > self.max_jump * state.mid:
            rejection = self._jump(state, mid)
            if rejection is not None:
                return rejection
        state.ts_ms, state.bid, state.ask, state.mid = ts_ms, bid, ask, mid
        if state.jump_run:  # nearly always empty: skip the call
            state.jump_run.clear()
        return None

    def _jump(self, state: _SymbolState, mid: float) -> Rejection | None:
        """Reject a jump unless it confirms a run of agreeing jumps (a real gap)."""
        run = state.jump_run
        if run and (max(*run, mid) - min(*run, mid)) > self.max_jump * min(*run, mid):
            run.clear()  # disagrees with the run: it starts a new one
        run.append(mid)
        if len(run) >= self.gap_confirmations:
            return None
        change = (mid / state.mid - 1.0) * 100.0
        return Rejection(
            JUMP,
            f"absurd jump: mid {mid:.6g} is {change:+.2f}% from the last mid {state.mid:.6g} "
            f"(limit {self.max_jump:.2%}; {len(run)}/{self.gap_confirmations} to confirm a gap)",
        )

    def snapshot(self) -> dict[str, Any]:
        """Plain values (JSON/msgpack-able) that :meth:`restore` accepts."""
        return {
            symbol: {"ts_ms": s.ts_ms, "bid": s.bid, "ask": s.ask, "jump_run": list(s.jump_run)}
            for symbol, s in self._states.items()
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._states = {
            symbol: _SymbolState(s["ts_ms"], s["bid"], s["ask"], list(s["jump_run"]))
            for symbol, s in snapshot.items()
        }


def _bad_price(bid: float, ask: float) -> Rejection:
    if not (math.isfinite(bid) and math.isfinite(ask)):
        return Rejection(NOT_FINITE, f"price not finite: bid {bid}, ask {ask}")
    return Rejection(NON_POSITIVE, f"price not positive: bid {bid}, ask {ask}")


# --- bars ----------------------------------------------------------------------------------

OHLC_INCONSISTENT = "ohlc_inconsistent"


def check_bar(open_: float, high: float, low: float, close: float) -> Rejection | None:
    """Stateless sanity check of one bar's OHLC (spread may be negative: FXCM's separate bid
    and ask candles cross slightly, see the data README)."""
    prices = (open_, high, low, close)
    if not all(map(math.isfinite, prices)):
        return Rejection(NOT_FINITE, f"price not finite: OHLC {prices}")
    if min(prices) <= 0.0:
        return Rejection(NON_POSITIVE, f"price not positive: OHLC {prices}")
    if not (low <= min(open_, close) and max(open_, close) <= high):
        return Rejection(OHLC_INCONSISTENT, f"OHLC inconsistent: {prices}")
    return None
