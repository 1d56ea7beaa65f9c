"""Join the feature groups of one bar into one vector (R5.4).

The three feature services publish separately; a model needs all of a bar's features at once.
:class:`FeatureJoin` collects FeaturesCalculated per (symbol, timeframe, barTime) and hands
back a :class:`JoinedFeatures` as soon as every group has arrived, or, once the deadline has
passed in event time, whatever arrived with the missing groups named. Memory is bounded by
the bars in flight: each entry leaves at completion or expiry.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from tradepipe.events import FeaturesCalculated

FEATURE_GROUPS = ("feature-engineering", "technical-analysis", "market-microstructure")


class JoinedFeatures(msgspec.Struct, frozen=True):
    symbol: str
    timeframe: str
    bar_time: datetime
    features: dict[str, float | None]
    groups: tuple[str, ...]  # the groups that arrived
    missing: tuple[str, ...]  # the groups that did not arrive before the deadline
    sources: tuple[FeaturesCalculated, ...]  # in group order
    last: FeaturesCalculated  # the event that arrived last: the one that completed the bar, if any

    @property
    def complete(self) -> bool:
        return not self.missing


class _Pending:
    __slots__ = ("first_seen", "parts", "last")

    def __init__(self, first_seen: datetime) -> None:
        self.first_seen = first_seen
        self.parts: dict[str, FeaturesCalculated] = {}
        self.last: FeaturesCalculated | None = None


class FeatureJoin:
    def __init__(self, groups: tuple[str, ...] = FEATURE_GROUPS, deadline: timedelta = timedelta(seconds=5)) -> None:
        self.groups = groups
        self.deadline = deadline
        self._pending: dict[tuple[str, str, datetime], _Pending] = {}

    def add(self, event: FeaturesCalculated) -> JoinedFeatures | None:
        """Take one group's event; the joined vector if this completed its bar, else None.
        Events of groups not joined here, or of a bar already handed out, are ignored."""
        if event.group not in self.groups or event.bar_time is None:
            return None
        key = (event.symbol, event.timeframe, event.bar_time)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(event.timestamp)
        pending.parts[event.group] = event
        pending.last = event
        if len(pending.parts) < len(self.groups):
            return None
        del self._pending[key]
        return self._joined(key, pending)

    def expire(self, now: datetime) -> list[JoinedFeatures]:
        """Bars whose deadline has passed at ``now`` (event time), partial, oldest first."""
        due = [key for key, p in self._pending.items() if now - p.first_seen >= self.deadline]
        return [self._joined(key, self._pending.pop(key)) for key in sorted(due, key=lambda k: k[2])]

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def snapshot(self) -> list:
        """The bars in flight, as plain builtins: a checkpoint can fall between the groups of
        one bar, and groups already consumed are not delivered again after a restart."""
        return msgspec.to_builtins([
            [p.first_seen, [e for e in p.parts.values() if e is not p.last] + [p.last]]
            for p in self._pending.values()
        ])

    def restore(self, state: list) -> None:
        self._pending = {}
        for first_seen, events in msgspec.convert(state, list[tuple[datetime, list[FeaturesCalculated]]]):
            for event in events:  # the last to arrive last
                self.add(event)
            self._pending[(events[0].symbol, events[0].timeframe, events[0].bar_time)].first_seen = first_seen

    def _joined(self, key: tuple[str, str, datetime], pending: _Pending) -> JoinedFeatures:
        symbol, timeframe, bar_time = key
        features: dict[str, float | None] = {}
        arrived = tuple(g for g in self.groups if g in pending.parts)
        for group in arrived:
            for name, value in pending.parts[group].features.items():
                if name in features:
                    raise ValueError(f"feature {name!r} is published by more than one group")
                features[name] = value
        return JoinedFeatures(
            symbol=symbol, timeframe=timeframe, bar_time=bar_time, features=features, groups=arrived,
            missing=tuple(g for g in self.groups if g not in pending.parts),
            sources=tuple(pending.parts[g] for g in arrived), last=pending.last,
        )
