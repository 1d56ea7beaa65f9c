"""The pipeline as separate processes (R9.1): ``tradepipe service NAME --bus URL``.

Every service of :func:`tradepipe.pipeline.service_factories` runs as its own process with a
:class:`~tradepipe.runtime.runner.ServiceRunner` (consumer group = the service's name unless
``--group``), and the data bridge runs as :class:`BridgeReplay`, publishing recorded ticks.

Determinism. On a bus each service reads its input topics independently, so without help a
trading engine could see tick T+5 before the signal that tick T caused, and fill at another
price than the in-process backtest. In **lockstep** the bridge publishes every tick, and after
each tick that starts a new minute for its symbol (so closes a bar) it waits until every group
in the deployment has committed everything on its input topics (:class:`Quiescence`): the
whole cascade of that bar is finished before the next tick exists. Services are written so
that the interleaving of their topics *within* such a cycle does not matter
(tests/services/test_arrival_order.py). Between bar closes only ticks flow, in order per
partition. A lockstep replay is therefore a distributed backtest with the in-process run's
orders; live data (or a replay without lockstep) flows freely.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from tradepipe.bus.base import Bus, BusError, now_ms
from tradepipe.config import Settings
from tradepipe.events.codec import get_codec
from tradepipe.events.envelope import ms_from_utc
from tradepipe.events.types import MarketDataReceived
from tradepipe.pipeline import merged, open_sources
from tradepipe.runtime.service import Context, Service
from tradepipe.runtime.store import Checkpoint, CheckpointStore, publish
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.validation import TickValidator

log = logging.getLogger(__name__)

#: health/metrics ports of services the seed gives none
EXTRA_PORTS = {"bar-builder": 8003, "trade-saga": 8004, "ema-cross": 8005}


def service_class(name: str) -> type[Service]:
    """The Service subclass called ``name`` (imported by the pipeline module)."""
    pending = list(Service.__subclasses__())
    while pending:
        cls = pending.pop()
        if getattr(cls, "name", None) == name:
            return cls
        pending.extend(cls.__subclasses__())
    raise KeyError(name)


def default_port(name: str) -> int | None:
    return getattr(service_class(name), "port", None) or EXTRA_PORTS.get(name)


class Quiescence:
    """Whether every group has committed everything on its input topics: the moment nothing
    is in flight in a deployment whose sources are paused."""

    def __init__(self, bus: Bus, groups: Mapping[str, Sequence[str]], *, poll_s: float = 0.005) -> None:
        self.bus = bus
        self.groups = dict(groups)
        self.topics = sorted({t for topics in self.groups.values() for t in topics})
        self.poll_s = poll_s
        self.waits = 0
        self.waited_s = 0.0

    def lagging(self) -> list[str]:
        """``group topic[partition] committed/end`` for each group not caught up."""
        ends = {topic: self.bus.end_offsets(topic) for topic in self.topics}
        behind = []
        for group, topics in self.groups.items():
            for topic in topics:
                committed = self.bus.committed_offsets(group, topic)
                behind += [f"{group} {topic}[{p}] {committed.get(p, 0)}/{end}"
                           for p, end in ends[topic].items() if committed.get(p, 0) < end]
        return behind

    def wait(self, *, stop: Any = None) -> None:
        """Block until nothing lags in two checks in a row (an output committed between the
        end-offset and the commit reads of one check shows up in the next). A check the broker
        cannot answer (it is restarting) counts as lagging."""
        started = time.monotonic()
        calm = 0
        while calm < 2 and not (stop is not None and stop.is_set()):
            try:
                calm = calm + 1 if not self.lagging() else 0
            except BusError as exc:
                log.warning("lockstep: cannot read the groups' progress (%s); retrying", exc)
                calm = 0
                time.sleep(1.0)
            if calm < 2:
                time.sleep(self.poll_s)
        self.waits += 1
        self.waited_s += time.monotonic() - started


class BridgeStats(msgspec.Struct):
    items: int = 0  # read from the files (good and bad)
    emitted: int = 0  # events published (market data and dead letters)
    checkpoints: int = 0
    lockstep_waits: int = 0


class BridgeReplay:
    """The data bridge as a process: recorded files (merged in event time) -> market-data
    events on the bus, in batches; after each batch is flushed, its progress (items read and
    the bridge's validator state) is checkpointed, so a restarted bridge skips what it already
    published. Re-published items (after a crash between flush and checkpoint) get the same
    eventIds, and consumers drop them."""

    name = DataBridge.name

    def __init__(self, bus: Bus, settings: Settings, paths: Sequence[Path], checkpoints: CheckpointStore, *,
                 symbol: str | None = None, start: datetime | None = None, end: datetime | None = None,
                 instance_id: str = "data-bridge-0", lockstep: Quiescence | None = None,
                 batch_size: int = 500) -> None:
        self.bus = bus
        self.checkpoints = checkpoints
        self.instance_id = instance_id
        self.lockstep = lockstep
        self.batch_size = batch_size
        self.bridge = DataBridge(TickValidator(max_jump=settings.data.max_jump, allow_locked=settings.data.allow_locked))
        self.ctx = Context(self.bridge.name)
        self.codec = get_codec(settings.bus.codec)
        self.producer = bus.producer()
        self.stats = BridgeStats()
        self.done = False
        self._minute: dict[str, int] = {}  # per symbol, the minute of its latest tick
        self._items: Iterator[tuple[str, Any]] = merged(
            open_sources(list(paths), symbol), *(None if t is None else ms_from_utc(t) for t in (start, end)))
        self._handlers = {"ticks": self.bridge.handle_tick, "bars": self.bridge.handle_bar}
        self._restore()

    def _restore(self) -> None:
        checkpoint = self.checkpoints.load(self.name, self.name, self.instance_id)
        if checkpoint is None:
            return
        state = checkpoint.state
        self.bridge.restore(state["bridge"])
        self._minute = dict(state["minutes"])
        self.stats.items = checkpoint.handled
        for _ in islice(self._items, checkpoint.handled):
            pass

    def step(self) -> int:
        """Publish up to one batch of items (fewer when a lockstep cycle ends); 0 when done."""
        count, cycle_ended = 0, False
        for kind, item in self._items:
            count += 1
            events = self._handlers[kind](item, self.ctx)
            self.stats.emitted += publish(self.producer, self.codec, events)
            if self.lockstep is not None and self._closes_a_bar(kind, events):
                cycle_ended = True
                break
            if count >= self.batch_size:
                break
        self.stats.items += count
        if count == 0:
            if not self.done and self.lockstep is not None:
                self.lockstep.wait()
            self.done = True
            return 0
        self.checkpoint()
        if cycle_ended:
            self.lockstep.wait()
            self.stats.lockstep_waits += 1
        return count

    def _closes_a_bar(self, kind: str, events: list) -> bool:
        """A bar item, or a tick in a new minute for its symbol: the end of a lockstep cycle."""
        if kind == "bars":
            return bool(events)
        if not events or type(events[0]) is not MarketDataReceived:
            return False
        tick = events[0]
        minute = tick.timestamp_ms // 60_000
        if self._minute.get(tick.symbol) == minute:
            return False
        self._minute[tick.symbol] = minute
        return True

    def checkpoint(self) -> Checkpoint:
        self.producer.flush()
        checkpoint = Checkpoint(positions=[], state={"bridge": self.bridge.snapshot(), "minutes": self._minute},
                                handled=self.stats.items, saved_ms=now_ms())
        self.checkpoints.save(self.name, self.name, self.instance_id, checkpoint)
        self.stats.checkpoints += 1
        return checkpoint

    def close(self) -> None:
        self.producer.close()


def lockstep_groups(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Group -> input topics of the named services (each service's group is its name)."""
    return {name: service_class(name).inputs for name in names}
