"""Scoring direction predictions against the move that followed (R6.3, R7.4).

One rule for training labels, the ensemble's live weights and the performance analytics'
hit rates: a prediction made at a bar with mid close ``price_then`` is resolved by the first
later bar of the same (symbol, timeframe) whose bar time is at least its horizon later; the
realized direction is that of ``price_now / price_then - 1`` with the dead band
(:func:`tradepipe.models.dataset.direction`, in return units), and the prediction is a hit
when its direction equals it.

:class:`HorizonScorer` holds the predictions awaiting their horizon: per (symbol, timeframe)
and horizon a deque, oldest first (predictions arrive in bar order, so only the head can be
due), bounded by ``MAX_AWAITING``. What resolves them is up to the caller: the ensemble uses
the bar and price of later predictions, the analytics the closed bars themselves.
"""

from __future__ import annotations

import functools
from collections import deque
from datetime import datetime, timedelta
from typing import Any

import msgspec

from tradepipe.models.dataset import direction
from tradepipe.models.learners import CLASSES
from tradepipe.sources.files import timeframe_ms

MAX_AWAITING = 4096  # predictions awaiting their horizon per (symbol, timeframe, horizon)


class Awaiting(msgspec.Struct, array_like=True):
    """A prediction waiting for its horizon to pass."""

    bar_time: datetime
    price: float
    model: str
    direction: str


def realized_direction(price_then: float, price_now: float, dead_band: float) -> str:
    """BUY / SELL / HOLD of the move from ``price_then`` to ``price_now`` (training's label rule)."""
    return CLASSES[int(direction(price_now / price_then - 1.0, dead_band))]


@functools.lru_cache(maxsize=256)
def horizon_ms(text: str) -> int | None:
    """A prediction's ``timeHorizon`` ("5m") in ms; None when it names no horizon (not scored)."""
    try:
        return timeframe_ms(text)
    except ValueError:
        return None


class HorizonScorer:
    """Predictions awaiting their horizon, resolved by later bars of their series."""

    __slots__ = ("dead_band", "awaiting")

    def __init__(self, dead_band: float) -> None:
        self.dead_band = dead_band
        #: (symbol, timeframe) -> horizon ms -> predictions, oldest first
        self.awaiting: dict[tuple[str, str], dict[int, deque[Awaiting]]] = {}

    def resolve(self, symbol: str, timeframe: str, bar_time: datetime, price: float) -> list[tuple[Awaiting, str]]:
        """Remove the predictions of (symbol, timeframe) whose horizon has passed at
        ``bar_time`` (mid close ``price``); each with the direction that was realized."""
        awaiting = self.awaiting.get((symbol, timeframe))
        if awaiting is None:
            awaiting = self.awaiting[(symbol, timeframe)] = {}
        resolved = []
        for horizon, queue in awaiting.items():
            due = bar_time - timedelta(milliseconds=horizon)
            while queue and queue[0].bar_time <= due:
                then = queue.popleft()
                resolved.append((then, realized_direction(then.price, price, self.dead_band)))
        return resolved

    def expect(self, symbol: str, timeframe: str, horizon: int, prediction: Awaiting) -> bool:
        """Queue ``prediction`` until ``horizon`` ms after its bar; False (not queued) when the
        same model's prediction of the same bar is already waiting."""
        queues = self.awaiting.get((symbol, timeframe))
        if queues is None:
            queues = self.awaiting[(symbol, timeframe)] = {}
        queue = queues.get(horizon)
        if queue is None:
            queue = queues[horizon] = deque(maxlen=MAX_AWAITING)
        for queued in reversed(queue):
            if queued.bar_time != prediction.bar_time:
                break
            if queued.model == prediction.model:
                return False
        queue.append(prediction)
        return True

    def __len__(self) -> int:
        return sum(len(q) for queues in self.awaiting.values() for q in queues.values())

    def snapshot(self) -> list[list[Any]]:
        """``[symbol, timeframe, horizon ms, [predictions]]`` per queue, plain builtins."""
        return [[s, tf, h, msgspec.to_builtins(list(q))]
                for (s, tf), queues in self.awaiting.items() for h, q in queues.items()]

    def restore(self, state: list[list[Any]]) -> None:
        self.awaiting = {}
        for s, tf, h, items in state:
            queues = self.awaiting.setdefault((s, tf), {})
            queues[int(h)] = deque(msgspec.convert(items, list[Awaiting]), maxlen=MAX_AWAITING)


__all__ = ["MAX_AWAITING", "Awaiting", "HorizonScorer", "horizon_ms", "realized_direction"]
