"""Ensemble coordinator (port 8027, R6.3): the models' predictions of one bar -> one signal.

Predictions are grouped by (correlationId, timeframe): the model services give every
prediction of one bar the bar's correlationId (the tick that closed it). A group is combined
as soon as every expected model service (``producers``, by service name, read from each
event's ``metadata.producer``) has answered, or once ``deadline_s`` has passed since its first
prediction in event time (checked on every incoming event and in ``on_timer``), with the
services that did not answer listed in ``missingModels``. A prediction arriving after its
group was combined is not combined again (it is still scored).

The signal does not depend on the order the predictions of a group arrived in (on a bus the
model services publish to the topic independently): contributors are taken in ``producers``
order, and the causationId (whose id also seeds the signal's) is the prediction of the last
expected producer that answered (the one that completes a group in process, where the model
services answer in that order), or, for a group the deadline closed, the latest prediction
(the first producer's among equals).

Weights: each model's rolling **live hit rate** over its last ``hit_window`` resolved
predictions, smoothed with ``prior_weight`` pseudo-observations at its validation accuracy
(``model.accuracy`` of its predictions, 1/3 when unknown)::

    weight = (hits + prior_weight * accuracy) / (resolved + prior_weight)

A prediction is resolved once a prediction of a later bar of the same (symbol, timeframe)
arrives whose bar is at least the horizon (``timeHorizon``) later, by the rule of
:mod:`tradepipe.models.scoring` (shared with training's labels and the performance
analytics): the realized direction is that of ``price_now / price_then - 1`` with the dead
band (``dead_band``, in return units), and a hit is a predicted direction equal to it. Fallback predictions
are not scored (the model did not make them); they contribute with the weight of their
service's model and are marked ``fallback`` in their Contribution, whose ``model`` names what
answered: the model (its last good answer) or ``"TrendRule"``.

Combination: ``score[d]`` = sum of weight x confidence over the contributors saying d; the
direction is the highest score (a tie -> HOLD), the confidence ``score[d] / sum(weights)``;
target and stop are the means of the agreeing contributors' targets and stops. Contributions
list each model's direction, confidence and normalised weight.

Memory is bounded: groups leave at combination or expiry, resolved predictions live in
deques of ``hit_window``, predictions awaiting their horizon in bounded deques per (symbol,
timeframe, horizon), and combined groups are remembered for the last ``DONE_MEMORY`` only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from tradepipe.config import EnsembleSettings
from tradepipe.events import PREDICTIONS, Event
from tradepipe.events.types import Contribution, PredictionGenerated, TradingSignalGenerated
from tradepipe.models.scoring import Awaiting, HorizonScorer, horizon_ms
from tradepipe.runtime.service import Context, Service

DIRECTIONS = ("BUY", "SELL", "HOLD")
UNKNOWN_ACCURACY = 1.0 / 3.0
DONE_MEMORY = 1024  # combined groups remembered, to ignore their late predictions


class HitWindow:
    """The last ``size`` hits (1) and misses (0) of one model, with their running sum."""

    __slots__ = ("outcomes", "hits")

    def __init__(self, size: int, outcomes: Sequence[int] = ()) -> None:
        self.outcomes: deque[int] = deque(maxlen=size)
        self.hits = 0
        for outcome in outcomes:
            self.add(outcome)

    def add(self, hit: int) -> None:
        outcomes = self.outcomes
        if len(outcomes) == outcomes.maxlen:
            self.hits -= outcomes[0]
        outcomes.append(hit)
        self.hits += hit

    def __len__(self) -> int:
        return len(self.outcomes)


class _Group:
    __slots__ = ("first_seen", "predictions")

    def __init__(self, first_seen: datetime) -> None:
        self.first_seen = first_seen
        self.predictions: dict[str, PredictionGenerated] = {}  # producer -> its prediction


class EnsembleCoordinator(Service):
    name = "ensemble-coordinator"
    port = 8027
    inputs = (PREDICTIONS,)

    def __init__(self, producers: Sequence[str], settings: EnsembleSettings | None = None, *,
                 dead_band: float = 0.35e-4) -> None:
        if not producers:
            raise ValueError("the ensemble needs at least one model service to wait for")
        settings = settings or EnsembleSettings()
        self.producers = tuple(producers)
        self._expected = len(set(self.producers))
        self.deadline = timedelta(seconds=settings.deadline_s)
        self.hit_window = settings.hit_window
        self.prior_weight = settings.prior_weight
        self.dead_band = dead_band
        # state (snapshot)
        self.groups: dict[tuple[Any, str], _Group] = {}
        self._done: deque[tuple[Any, str]] = deque()
        self._done_set: set[tuple[Any, str]] = set()
        self.hit_rates: dict[str, HitWindow] = {}  # model name -> outcomes
        self.accuracy: dict[str, float] = {}  # model name -> validation accuracy (the prior)
        self.model_of: dict[str, str] = {}  # producer -> the model it last answered with
        self.scorer = HorizonScorer(dead_band)  # predictions awaiting their horizon
        # counters (not state)
        self.signals = 0
        self.partial_signals = 0
        self.late_predictions = 0
        self.unexpected_predictions = 0

    # -- handling -------------------------------------------------------------------------
    def handle(self, event: Event, ctx: Context) -> list[Event]:
        out = self._expire(ctx.now(), ctx, event) if self.groups else []
        if type(event) is not PredictionGenerated:
            return out
        producer = event.metadata.producer
        if producer not in self.producers:
            self.unexpected_predictions += 1
            return out
        self._score(event, producer)
        key = (event.correlation_id or event.event_id, event.timeframe)
        if key in self._done_set:
            self.late_predictions += 1
            return out
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(event.timestamp)
        group.predictions.setdefault(producer, event)
        if len(group.predictions) >= self._expected:
            del self.groups[key]
            out.append(self._combine(key, group, ctx, event))
        return out

    def on_timer(self, ctx: Context) -> list[Event]:
        return self._expire(ctx.now(), ctx, None)

    def _expire(self, now: datetime, ctx: Context, handling: Event | None) -> list[Event]:
        due = [key for key, group in self.groups.items() if now - group.first_seen >= self.deadline]
        return [self._combine(key, self.groups.pop(key), ctx, handling) for key in due]

    # -- scoring --------------------------------------------------------------------------
    @property
    def awaiting(self) -> dict[tuple[str, str], dict[int, deque[Awaiting]]]:
        """Predictions awaiting their horizon: (symbol, timeframe) -> horizon ms -> oldest first."""
        return self.scorer.awaiting

    def _score(self, event: PredictionGenerated, producer: str) -> None:
        """Resolve the predictions of this (symbol, timeframe) whose horizon has passed at
        this event's bar, then queue this one (if it is the model's own)."""
        bar_time, price = event.bar_time, event.price
        if bar_time is None or price is None or not price > 0:
            return
        symbol = event.symbol or ""
        for then, realized in self.scorer.resolve(symbol, event.timeframe, bar_time, price):
            window = self.hit_rates.get(then.model)
            if window is None:
                window = self.hit_rates[then.model] = HitWindow(self.hit_window)
            window.add(1 if realized == then.direction else 0)
        if event.fallback:
            return
        model = event.model
        self.model_of[producer] = model.name
        self.accuracy[model.name] = model.accuracy if model.accuracy is not None else UNKNOWN_ACCURACY
        horizon = horizon_ms(event.prediction.time_horizon)
        if horizon is not None:
            self.scorer.expect(symbol, event.timeframe, horizon,
                               Awaiting(bar_time, price, model.name, event.prediction.direction))

    def weight(self, model: str, accuracy: float | None = None) -> float:
        """``model``'s current weight: its smoothed rolling hit rate (``accuracy`` is the prior
        of a model not seen predicting yet)."""
        accuracy = self.accuracy.get(model, UNKNOWN_ACCURACY if accuracy is None else accuracy)
        window = self.hit_rates.get(model)
        resolved, hits = (len(window), window.hits) if window is not None else (0, 0)
        prior = self.prior_weight
        if resolved + prior == 0:
            return accuracy
        return (hits + prior * accuracy) / (resolved + prior)

    # -- combining ------------------------------------------------------------------------
    def _combine(self, key: tuple[Any, str], group: _Group, ctx: Context,
                 handling: Event | None) -> TradingSignalGenerated:
        """The signal of ``group`` (complete, or closed by its deadline), found while
        ``handling`` an event (None: on a timer)."""
        self._remember(key)
        contributors = []  # (producer, prediction, weight)
        missing = []
        answered = []  # the predictions, in producers order
        for producer in dict.fromkeys(self.producers):
            p = group.predictions.get(producer)
            if p is None:
                missing.append(producer)
                continue
            answered.append(p)
            # a fallback answer is weighed as its service's model
            model = (self.model_of.get(producer) or p.model.name) if p.fallback else p.model.name
            contributors.append((producer, p, self.weight(model, p.model.accuracy)))
        total = sum(w for _, _, w in contributors)
        scores = dict.fromkeys(DIRECTIONS, 0.0)
        for _, p, w in contributors:
            scores[p.prediction.direction] += w * p.prediction.confidence
        best = max(scores.values())
        winners = [d for d, s in scores.items() if s == best]
        direction = winners[0] if len(winners) == 1 else "HOLD"
        confidence = scores[direction] / total if total > 0 else 0.0
        agreeing = [p.prediction for _, p, _ in contributors if p.prediction.direction == direction]
        targets = [a.target_price for a in agreeing if a.target_price is not None]
        stops = [a.stop_loss for a in agreeing if a.stop_loss is not None]
        first = answered[0]
        if missing:  # the latest; max keeps the first of equals
            last = max(answered, key=lambda e: e.timestamp)
        else:
            last = answered[-1]
        ctx.begin(handling, key=last.event_id.bytes)  # the signal's id: as if ``last`` were being handled
        self.signals += 1
        if missing:
            self.partial_signals += 1
        return ctx.emit(
            TradingSignalGenerated,
            direction=direction,
            confidence=confidence,
            timeframe=key[1],
            contributors=[
                Contribution(model=p.model.name, direction=p.prediction.direction,
                             confidence=p.prediction.confidence, weight=w / total if total > 0 else 0.0,
                             producer=producer, fallback=p.fallback)
                for producer, p, w in contributors
            ],
            missing_models=missing,
            bar_time=first.bar_time,
            price=next((p.price for p in answered if p.price is not None), None),
            target_price=sum(targets) / len(targets) if targets and direction != "HOLD" else None,
            stop_loss=sum(stops) / len(stops) if stops and direction != "HOLD" else None,
            symbol=first.symbol,
            correlation_id=key[0],
            causation_id=last.event_id,
        )

    def _remember(self, key: tuple[Any, str]) -> None:
        self._done.append(key)
        self._done_set.add(key)
        if len(self._done) > DONE_MEMORY:
            self._done_set.discard(self._done.popleft())

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Hit-rate windows and priors, predictions awaiting their horizon, groups in flight
        (their predictions) and the recently combined groups. Plain builtins."""
        return {
            "hit_rates": {m: list(w.outcomes) for m, w in self.hit_rates.items()},
            "accuracy": dict(self.accuracy),
            "model_of": dict(self.model_of),
            "awaiting": self.scorer.snapshot(),
            "groups": [msgspec.to_builtins(list(g.predictions.values())) for g in self.groups.values()],
            "done": [[str(c), tf] for c, tf in self._done],
        }

    def restore(self, state: dict[str, Any]) -> None:
        import uuid

        self.hit_rates = {m: HitWindow(self.hit_window, o) for m, o in state["hit_rates"].items()}
        self.accuracy = dict(state["accuracy"])
        self.model_of = dict(state["model_of"])
        self.scorer.restore(state["awaiting"])
        self.groups = {}
        for predictions in state["groups"]:
            for p in msgspec.convert(predictions, list[PredictionGenerated]):
                key = (p.correlation_id or p.event_id, p.timeframe)
                group = self.groups.get(key)
                if group is None:
                    group = self.groups[key] = _Group(p.timestamp)
                group.predictions[p.metadata.producer] = p
        self._done, self._done_set = deque(), set()
        for c, tf in state["done"]:
            self._remember((uuid.UUID(c), tf))


__all__ = ["EnsembleCoordinator", "HitWindow"]
