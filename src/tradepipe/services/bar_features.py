"""Shared shape of the bar-driven feature services (feature engineering, technical analysis).

Each keeps one :class:`~tradepipe.features.base.IndicatorSet` per (symbol, timeframe),
advances it with every BarClosed on the bar's **mid** OHLC, and emits one FeaturesCalculated
per bar: ``group`` = the service name, ``barTime`` = the bar's open time, correlationId = the
tick that closed the bar (inherited through the BarClosed), values that are not defined yet
(warm-up) published as null, never as NaN.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, ClassVar

from tradepipe.events import MARKET_DATA, BarClosed, Event, FeaturesCalculated
from tradepipe.events.types import FeaturesMetadata
from tradepipe.features.base import IndicatorSet
from tradepipe.runtime.service import Context, Service


class BarFeatureService(Service):
    inputs = (MARKET_DATA,)
    indicator_set: ClassVar[type[IndicatorSet]]
    #: also publish the bar's mid ``close`` (one group does, so the joined vector has the
    #: reference price that scale-free model inputs and price targets are computed from)
    publishes_close: ClassVar[bool] = False

    def __init__(self, timeframes: Iterable[str] | None = None) -> None:
        #: timeframes to compute; None = every timeframe that arrives
        self.timeframes = frozenset(timeframes) if timeframes is not None else None
        self.sets: dict[tuple[str, str], IndicatorSet] = {}

    def handle(self, event: Event, ctx: Context) -> list[Event]:
        if type(event) is not BarClosed:
            return []
        if self.timeframes is not None and event.timeframe not in self.timeframes:
            return []
        key = (event.symbol, event.timeframe)
        indicators = self.sets.get(key)
        if indicators is None:
            indicators = self.sets[key] = self.indicator_set()
        started = time.perf_counter()
        mid = event.mid
        values = indicators.update(mid.open, mid.high, mid.low, mid.close)
        features = indicators.as_features(values)
        if self.publishes_close:
            features["close"] = mid.close if mid.close == mid.close else None  # NaN -> null
        elapsed_us = (time.perf_counter() - started) * 1e6
        return [ctx.emit(
            FeaturesCalculated,
            timeframe=event.timeframe,
            bar_time=event.bar_time,
            group=self.name,
            features=features,
            metadata=FeaturesMetadata(
                version=FeaturesCalculated.schema_version, producer=self.name,
                calculation_time=f"{elapsed_us:.1f}us",
            ),
        )]

    def snapshot(self) -> Any:
        return [[symbol, timeframe, s.snapshot()] for (symbol, timeframe), s in self.sets.items()]

    def restore(self, state: Any) -> None:
        self.sets = {}
        for symbol, timeframe, values in state:
            indicators = self.sets[(symbol, timeframe)] = self.indicator_set()
            indicators.restore(values)
