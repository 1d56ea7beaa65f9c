"""Market microstructure service (port 8025, R5.3, R5.4).

It consumes the ticks itself, since tick-level statistics need them, and bars them with the
bar builder's engine (same bucket rule, same bars). The tick that closes a bar emits one
FeaturesCalculated for it: ``group`` = "market-microstructure", ``bar_time`` = the bar's open,
correlationId = that tick, ``calculationTime`` = the time spent on the feature map. The
features are listed in :mod:`tradepipe.features.microstructure`. TickData carries no book
sizes, so ``micro_price`` is published as null. Inactivity flush, snapshot and restore are
those of :class:`~tradepipe.services.bar_builder.TickBarService`.
"""

from __future__ import annotations

import time

from tradepipe.events.envelope import utc_from_ms
from tradepipe.events.types import FeaturesCalculated, FeaturesMetadata
from tradepipe.features.bars import ClosedBar
from tradepipe.features.microstructure import MicrostructureAccumulator, microstructure_features
from tradepipe.runtime.service import Context
from tradepipe.services.bar_builder import TickBarService


class MarketMicrostructure(TickBarService):
    name = "market-microstructure"
    port = 8025
    accumulator = MicrostructureAccumulator

    def bar_event(self, bar: ClosedBar[MicrostructureAccumulator], ctx: Context) -> FeaturesCalculated:
        started = time.perf_counter()
        features = microstructure_features(bar)
        elapsed_us = (time.perf_counter() - started) * 1e6
        return ctx.emit(
            FeaturesCalculated,
            symbol=bar.symbol,
            timeframe=bar.timeframe,
            bar_time=utc_from_ms(bar.start_ms),
            group=self.name,
            features=features,
            metadata=FeaturesMetadata(
                version=FeaturesCalculated.schema_version, producer=self.name,
                calculation_time=f"{elapsed_us:.1f}us",
            ),
        )


__all__ = ["MarketMicrostructure"]
