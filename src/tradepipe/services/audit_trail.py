"""Audit trail (port 8019, R7.3, R3.6): every order event into the audit log, with the causal
chain behind it.

The trail watches the whole decision path and keeps the recent upstream events in a
:class:`CausalCache` keyed by correlationId (the tick that closed a bar roots every event
derived from it: bar, features, predictions, signal, verdict, order). The cache holds at most
``cache_events`` events in all and evicts the oldest correlations first. Ticks go to a small
ring of the most recent ones instead (the tick path is one dict insert, one deque append and
the eviction of a tick still in the CPU cache): a bar's first event moves the tick that closed
it into its correlation, and an exit finds its triggering tick in the ring.

On each order event the chain is resolved and appended to the :class:`AuditLog`:

- an entry (an order placed on a signal, its fill or rejection, its saga outcome): the root
  tick, the bar of the signal's timeframe, its three FeaturesCalculated, the predictions, the
  signal and the verdict (the one the order descends from, else the correlation's last), then
  the earlier events of the same order, read back from the log;
- an exit (an order closing a position, its fill, PositionClosed): these carry the opening
  signal's correlationId but were caused by a later tick, so the chain is that tick (found by
  walking causationIds back through the order's own events) and the events of the position
  (the opening order's and the closing order's earlier ones).

Missing pieces never fail an append: the chain is recorded as found, and ``explain`` names the
gaps. Appends are committed in batches (see :class:`AuditLog`); :meth:`AuditTrail.snapshot`
flushes, so a checkpoint never covers an uncommitted record, and re-delivered events are
no-ops (the log is unique by eventId). The trail's state is the log itself: the cache is
rebuilt from the events that follow a restart.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from tradepipe.config import AuditSettings
from tradepipe.events import FEATURES, MARKET_DATA, ORDERS, PREDICTIONS, SIGNALS, VALIDATED, Event
from tradepipe.events.types import (
    BarClosed, FeaturesCalculated, MarketDataReceived, PredictionGenerated, SignalRejected, SignalValidated,
    TradingSignalGenerated,
)
from tradepipe.read.audit_log import AuditLog
from tradepipe.runtime.service import Context, Service

#: ticks kept for exits and bar closes. In process an exit's tick is the one being handled; on
#: a bus the order-events topic can trail market data by a runner batch (runner.batch_size,
#: 500), so twice that. Not more: each tick is freed when it leaves the ring, and a small ring
#: frees it while still in the CPU cache (4096 cost ~1 us a tick more in the EMA-cross backtest)
RECENT_TICKS = 1024
#: the upstream stages of an entry's chain, in causal order
STAGES = (MarketDataReceived, BarClosed, FeaturesCalculated, PredictionGenerated, TradingSignalGenerated)
VERDICTS = (SignalValidated, SignalRejected)


class CausalCache:
    """The last ``capacity`` upstream events, grouped by correlationId; the oldest
    correlations are evicted first (a whole correlation at a time). Ticks are kept apart, in a
    ring of the last ``RECENT_TICKS``: a tick is needed later only if it closed a bar (then it
    roots a correlation: the bar moves it into the cache) or triggered an exit (the exit is
    recorded within the same dispatch, or moments later on a bus). Keeping all ticks in the
    big cache cost a slow eviction per tick, of ticks long out of the CPU cache."""

    __slots__ = ("capacity", "size", "_by_correlation", "_arrival", "_ticks", "_tick_arrival")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        # Keyed by the UUID's int: UUID.__hash__ is Python code, an int hashes in C (this runs per tick).
        self._by_correlation: dict[int, list[Event]] = {}
        self._arrival: deque[int] = deque()  # correlations, oldest first
        self._ticks: dict[int, MarketDataReceived] = {}
        self._tick_arrival: deque[int] = deque()

    def add_tick(self, tick: MarketDataReceived) -> None:
        key = tick.event_id.int
        self._ticks[key] = tick
        arrival = self._tick_arrival
        arrival.append(key)
        if len(arrival) > RECENT_TICKS:
            del self._ticks[arrival.popleft()]

    def add(self, event: Event) -> None:
        key = (event.correlation_id or event.event_id).int
        by_correlation = self._by_correlation
        events = by_correlation.get(key)
        if events is None:
            events = by_correlation[key] = []
            self._arrival.append(key)
            root = self._ticks.get(key)  # the tick that closed this bar roots the correlation
            if root is not None:
                events.append(root)
                self.size += 1
        events.append(event)
        self.size += 1
        while self.size > self.capacity:
            self.size -= len(by_correlation.pop(self._arrival.popleft()))

    def correlation(self, correlation_id: uuid.UUID) -> list[Event]:
        """The cached events of ``correlation_id``, in arrival order."""
        return self._by_correlation.get(correlation_id.int, [])

    def tick(self, event_id: uuid.UUID | None) -> MarketDataReceived | None:
        """The tick ``event_id`` if still cached."""
        if event_id is None:
            return None
        tick = self._ticks.get(event_id.int)
        if tick is not None:
            return tick
        first = self._by_correlation.get(event_id.int, [None])[0]
        return first if type(first) is MarketDataReceived and first.event_id == event_id else None

    def __len__(self) -> int:
        return self.size


def entry_chain(events: Sequence[Event], correlation_id: uuid.UUID, ancestors: set[uuid.UUID]) -> list[Event]:
    """The decision path behind an order of ``correlation_id`` among its cached ``events``:
    tick, bar, features, predictions, signal, verdict. The verdict is the one among
    ``ancestors`` (the causationIds of the order's events), else the last validated one, else
    the last; the other stages are those of its signal's timeframe."""
    verdicts = [e for e in events if type(e) in VERDICTS]
    verdict = (next((v for v in verdicts if v.event_id in ancestors), None)
               or next((v for v in reversed(verdicts) if type(v) is SignalValidated), None)
               or (verdicts[-1] if verdicts else None))
    signals = [e for e in events if type(e) is TradingSignalGenerated]
    signal = next((s for s in signals if verdict is not None and s.event_id == verdict.signal_id), None) or (
        signals[-1] if signals else None)
    timeframe = (signal.timeframe if signal is not None else verdict.timeframe if verdict is not None else "")
    chain: list[Event] = []
    for stage in STAGES:
        if stage is MarketDataReceived:
            chain.extend(e for e in events if type(e) is stage and e.event_id == correlation_id)
        elif stage is TradingSignalGenerated:
            chain.extend(s for s in (signal,) if s is not None)
        else:
            found = [e for e in events if type(e) is stage and (not timeframe or e.timeframe == timeframe)]
            chain.extend(found[:1] if stage is BarClosed else found)
    if verdict is not None:
        chain.append(verdict)
    return chain


class AuditTrail(Service):
    name = "audit-trail"
    port = 8019
    inputs = (MARKET_DATA, FEATURES, PREDICTIONS, SIGNALS, VALIDATED, ORDERS)

    def __init__(self, log: AuditLog, *, cache_events: int = AuditSettings().cache_events) -> None:
        self.log = log
        self.cache = CausalCache(cache_events)
        # counters (not state)
        self.appended = 0
        self.duplicates = 0
        self.skipped = 0  # order-topic events about no order (a saga that ended before one)

    def handle(self, event: Event, ctx: Context) -> tuple[()]:
        if type(event) is MarketDataReceived:  # first: nearly every event is a tick
            self.cache.add_tick(event)
        elif event.topic == ORDERS:
            self._record(event)
        else:
            self.cache.add(event)
        return ()

    def _record(self, event: Event) -> None:
        order_id = getattr(event, "order_id", "") or getattr(event, "position_id", "")
        if not order_id:
            self.skipped += 1
            return
        if self.log.append(event, self.chain(event, order_id)):
            self.appended += 1
        else:
            self.duplicates += 1

    def chain(self, event: Event, order_id: str) -> list[Event]:
        """``event``'s causal chain (see the module docstring), in causal order."""
        own = self.log.events_of(order_id)  # the order's (and its position's) earlier events
        position_id = getattr(event, "position_id", "") or next(
            (e.position_id for e in own if getattr(e, "order_id", "") == order_id and getattr(e, "position_id", "")), "")
        if position_id and position_id != order_id:  # an exit
            position = self.log.events_of(position_id)
            return [*self._trigger(event, position), *position]
        ancestors = {e.causation_id for e in (event, *own) if e.causation_id is not None}
        correlation_id = event.correlation_id or event.event_id
        return [*entry_chain(self.cache.correlation(correlation_id), correlation_id, ancestors), *own]

    def _trigger(self, event: Event, known: list[Event]) -> list[MarketDataReceived]:
        """The tick that caused ``event``, reached by walking causationIds back through the
        order events ``known``; empty if it is no longer cached."""
        by_id = {e.event_id: e for e in known}
        cause, steps = event.causation_id, 0
        while cause in by_id and steps < len(by_id):  # steps: a malformed cycle cannot loop
            cause, steps = by_id[cause].causation_id, steps + 1
        tick = self.cache.tick(cause)
        return [tick] if tick is not None else []

    def flush(self) -> None:
        """Commit the records appended so far."""
        self.log.flush()

    def close(self) -> None:
        """Commit; the log stays open (its creator owns it) and the trail usable."""
        self.flush()

    def snapshot(self) -> Any:
        # The log is the state and is durable once flushed; the cache refills from new events.
        self.flush()
        return None


__all__ = ["AuditTrail", "CausalCache", "entry_chain"]
