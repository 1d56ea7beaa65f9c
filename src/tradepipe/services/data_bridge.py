"""The data bridge (R4.1, R4.2): turns raw ticks and bars into market-data events.

Pure: it gets items already read by a source (files, synthetic, MT5) and a Context, and
returns events; it never does I/O and never raises on bad data. Bad data becomes a DeadLetter
with the reason, the reason code as ``error_type`` and the original row bytes.

Event time (R3.5): the clock is set to each tick's time (a bar's *close* time), so outputs
carry event time in backtests, never wall time. A DeadLetter for a rejected tick carries that
tick's time; one for an unreadable row (no time of its own) the time of the item before it,
which is part of the snapshot so that a restarted bridge emits the same DeadLetter.

Ids (R3.6): a good tick is a root event keyed ``"{symbol}|{ts_ms}|{position}"``, so reading
the same file again yields the same eventIds and downstream deduplication works.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tradepipe.events.envelope import Event, utc_from_ms
from tradepipe.events.types import OHLC, BarClosed, DeadLetter, MarketDataReceived, TickData
from tradepipe.runtime.service import Context, Service
from tradepipe.sources.files import BadRow, RawBar, RawTick, original_bytes, timeframe_ms
from tradepipe.sources.validation import TickValidator, check_bar


class DataBridge(Service):
    name = "data-bridge"
    port = 8001

    def __init__(self, validator: TickValidator | None = None) -> None:
        self.validator = validator or TickValidator()
        self.accepted = 0
        self.rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.last_ts_ms = 0  # time of the latest item that had one

    def handle_tick(self, item: RawTick | BadRow, ctx: Context) -> list[Event]:
        if type(item) is BadRow:
            return [self._dead_letter(item, item.code, item.reason, "tick", ctx)]
        rejection = self.validator.check(item.symbol, item.ts_ms, item.bid, item.ask)
        if rejection is not None:
            return [self._dead_letter(item, rejection.code, rejection.message, "tick", ctx)]
        self.accepted += 1
        self.last_ts_ms = ts_ms = item.ts_ms
        ctx.begin(None, key=f"{item.symbol}|{ts_ms}|{item.position}".encode())
        at = utc_from_ms(ts_ms)
        ctx.clock.advance(at)
        # what ctx.emit would build, with the envelope spelled out: once per tick, this
        # keyword call is much cheaper than emit's ``cls(**fields)``
        return [MarketDataReceived(
            event_id=ctx.next_event_id(at),
            timestamp=at,
            symbol=item.symbol,
            metadata=ctx.metadata(MarketDataReceived),
            source=item.source,
            data=TickData(bid=item.bid, ask=item.ask, volume=item.volume, timestamp=at),
        )]

    def handle_bar(self, item: RawBar | BadRow, ctx: Context) -> list[Event]:
        """Emit BarClosed at the bar's close time.

        Bar files carry bid OHLC and only the *close* spread, so ask OHLC = bid + spread and
        mid = bid + spread / 2 are approximations (exact at the close only), and
        spread_mean = spread_max = that close spread. A file without spreads gives ask = mid =
        bid and spread 0. ``tick_count`` is the file's volume (tick volume; 0 = not provided).
        """
        if type(item) is BadRow:
            return [self._dead_letter(item, item.code, item.reason, "bar", ctx)]
        rejection = check_bar(item.open, item.high, item.low, item.close)
        if rejection is not None:
            return [self._dead_letter(item, rejection.code, rejection.message, "bar", ctx)]
        self.accepted += 1
        self.last_ts_ms = close_ms = item.ts_ms + timeframe_ms(item.timeframe)
        ctx.begin(None, key=f"{item.symbol}|{item.timeframe}|{item.ts_ms}|{item.position}".encode())
        ctx.clock.advance(utc_from_ms(close_ms))
        spread = item.spread or 0.0
        bid = OHLC(open=item.open, high=item.high, low=item.low, close=item.close)
        return [ctx.emit(
            BarClosed,
            symbol=item.symbol,
            timeframe=item.timeframe,
            bar_time=utc_from_ms(item.ts_ms),
            bid=bid,
            ask=_shifted(bid, spread),
            mid=_shifted(bid, spread / 2),
            tick_count=int(item.volume),
            spread_mean=spread,
            spread_max=spread,
        )]

    def _dead_letter(
        self, item: RawTick | RawBar | BadRow, code: str, message: str, kind: str, ctx: Context
    ) -> DeadLetter:
        self.rejected += 1
        self.rejected_by_reason[code] += 1
        if type(item) is BadRow:
            verb = "unreadable"
        else:
            verb = "rejected"
            self.last_ts_ms = item.ts_ms
        ctx.begin(None, key=f"{item.symbol}|{item.source}|{item.position}|{code}".encode())
        ctx.clock.advance(utc_from_ms(self.last_ts_ms))
        return ctx.emit(
            DeadLetter,
            symbol=item.symbol,
            reason=f"{verb} {kind}: {message} ({item.source} line {item.position})",
            error_type=code,
            source_topic=None,
            original_type=kind,
            original=original_bytes(item),
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "validator": self.validator.snapshot(),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "last_ts_ms": self.last_ts_ms,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.validator.restore(state["validator"])
        self.accepted = state["accepted"]
        self.rejected = state["rejected"]
        self.rejected_by_reason = Counter(state["rejected_by_reason"])
        self.last_ts_ms = state["last_ts_ms"]


def _shifted(prices: OHLC, by: float) -> OHLC:
    return OHLC(open=prices.open + by, high=prices.high + by, low=prices.low + by, close=prices.close + by)
