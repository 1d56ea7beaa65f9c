"""Feature tables for training and research (R5.5): one code path with live.

:func:`build_feature_table` replays recorded ticks (or bars) through the data bridge and the
live feature services (bar builder, feature engineering, technical analysis, microstructure)
in the in-process kernel, joins each bar's groups, and lays the result out as a table. There
is no second implementation of any feature: a value in the table is the value the live
service published for that bar, computed only from data up to the item that closed the bar.

Ticks give all three groups. Bars (a bar file replayed through :meth:`DataBridge.handle_bar`,
as ``tradepipe run`` does) give only the two bar-driven groups, feature engineering and
technical analysis: the microstructure group needs the ticks inside a bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import msgspec
import numpy as np

from tradepipe.events import FeaturesCalculated
from tradepipe.features.join import FEATURE_GROUPS, FeatureJoin, JoinedFeatures
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.files import RawBar

#: the feature groups a bar file can give (no ticks inside the bars: no microstructure)
BAR_GROUPS = ("feature-engineering", "technical-analysis")


class FeatureTable(msgspec.Struct, frozen=True):
    """Bars in rows, features in columns; NaN where a feature was not defined yet."""

    symbol: str
    timeframe: str
    bar_time: list[datetime]  # each row's bar open time, UTC
    columns: tuple[str, ...]
    values: np.ndarray  # float64, shape (len(bar_time), len(columns))

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


class TimeframeMismatch(ValueError):
    """A bar file's bars are not of the timeframe the table was asked for."""


def build_feature_table(
    items: Iterable, *, symbol: str, timeframe: str = "1m", kind: Literal["ticks", "bars"] = "ticks"
) -> FeatureTable:
    """Run ``items`` of one symbol through the live feature stage and return the joined
    features of every closed ``timeframe`` bar.

    ``kind="ticks"``: RawTick items (e.g. ``read_ticks(path)``); bars of ``timeframe`` are
    built from them and all three groups are joined. ``kind="bars"``: RawBar items (e.g.
    ``read_bars(path)``) whose own timeframe must be ``timeframe`` (TimeframeMismatch
    otherwise); only feature engineering and technical analysis are joined. Unreadable or
    rejected items are dead-lettered by the bridge and skipped, as live.
    """
    from tradepipe.pipeline import feature_services

    if kind not in ("ticks", "bars"):
        raise ValueError(f"kind must be 'ticks' or 'bars', not {kind!r}")
    rows: list[JoinedFeatures] = []
    join = FeatureJoin(FEATURE_GROUPS if kind == "ticks" else BAR_GROUPS)

    def collect(event) -> None:
        if type(event) is FeaturesCalculated and event.timeframe == timeframe and event.symbol == symbol:
            joined = join.add(event)
            if joined is not None:
                rows.append(joined)

    kernel = InProcessPipeline(feature_services([timeframe]), on_event=collect)
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    if kind == "ticks":
        for item in items:
            kernel.feed_all(bridge.handle_tick(item, ctx))
    else:
        for item in items:
            if type(item) is RawBar and item.timeframe != timeframe:
                raise TimeframeMismatch(
                    f"{item.source}: holds {item.timeframe} bars, but {timeframe} bars were asked for "
                    f"(bars cannot be re-sampled here; use --timeframe {item.timeframe})"
                )
            kernel.feed_all(bridge.handle_bar(item, ctx))
    columns = tuple(rows[0].features) if rows else ()
    values = np.array(
        [[np.nan if (v := row.features[c]) is None else v for c in columns] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(columns))
    return FeatureTable(symbol, timeframe, [row.bar_time for row in rows], columns, values)
