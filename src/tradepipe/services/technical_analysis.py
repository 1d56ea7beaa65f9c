"""Technical analysis service (port 8024, R5.2, R5.4).

Per (symbol, timeframe), advances :class:`~tradepipe.features.technical.TechnicalIndicators`
(ATR, Stochastic, ADX, log returns, candlestick patterns) with every BarClosed on the bar's mid
OHLC and emits one FeaturesCalculated with ``group`` = "technical-analysis"; the shell is
:class:`~tradepipe.services.bar_features.BarFeatureService`.
"""

from __future__ import annotations

from tradepipe.features.technical import TechnicalIndicators
from tradepipe.services.bar_features import BarFeatureService


class TechnicalAnalysis(BarFeatureService):
    name = "technical-analysis"
    port = 8024
    indicator_set = TechnicalIndicators
