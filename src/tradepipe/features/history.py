"""Feature tables for training and research (R5.5): one code path with live.

:func:`build_feature_table` replays recorded ticks through the data bridge and the live
feature services (bar builder, feature engineering, technical analysis, microstructure) in
the in-process kernel, joins each bar's three groups, and lays the result out as a table.
There is no second implementation of any feature: a value in the table is the value the live
service published for that bar, computed only from ticks up to the tick that closed the bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec
import numpy as np

from tradepipe.events import FeaturesCalculated
from tradepipe.features.join import FEATURE_GROUPS, FeatureJoin, JoinedFeatures
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.services.data_bridge import DataBridge


class FeatureTable(msgspec.Struct, frozen=True):
    """Bars in rows, features in columns; NaN where a feature was not defined yet."""

    symbol: str
    timeframe: str
    bar_time: list[datetime]  # each row's bar open time, UTC
    columns: tuple[str, ...]
    values: np.ndarray  # float64, shape (len(bar_time), len(columns))

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


def build_feature_table(ticks: Iterable, *, symbol: str, timeframe: str = "1m") -> FeatureTable:
    """Run ``ticks`` (RawTick items of one symbol, e.g. ``read_ticks(path)``) through the live
    feature stage and return the joined features of every closed ``timeframe`` bar."""
    from tradepipe.pipeline import feature_services

    rows: list[JoinedFeatures] = []
    join = FeatureJoin(FEATURE_GROUPS)

    def collect(event) -> None:
        if type(event) is FeaturesCalculated and event.timeframe == timeframe and event.symbol == symbol:
            joined = join.add(event)
            if joined is not None:
                rows.append(joined)

    kernel = InProcessPipeline(feature_services([timeframe]), on_event=collect)
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    for item in ticks:
        kernel.feed_all(bridge.handle_tick(item, ctx))
    columns = tuple(rows[0].features) if rows else ()
    values = np.array(
        [[np.nan if (v := row.features[c]) is None else v for c in columns] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(columns))
    return FeatureTable(symbol, timeframe, [row.bar_time for row in rows], columns, values)
