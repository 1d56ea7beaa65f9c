"""Feature engineering service (R5.1, port 8011): RSI, MACD, SMA 20, EMA 50 and Bollinger
bands per (symbol, timeframe), on each BarClosed's mid-price close, plus that ``close``; see
:mod:`tradepipe.features.core` for the indicators and :mod:`tradepipe.services.bar_features`
for the event handling."""

from __future__ import annotations

from tradepipe.features.core import CoreIndicators
from tradepipe.services.bar_features import BarFeatureService


class FeatureEngineering(BarFeatureService):
    name = "feature-engineering"
    port = 8011
    indicator_set = CoreIndicators
    publishes_close = True
