"""Broker adapters behind one interface (:class:`Broker`): paper and MetaTrader 5."""

from tradepipe.trading.brokers.base import Broker, BrokerRejection, Fill, OrderRequest, Quote
from tradepipe.trading.brokers.mt5 import Mt5Broker
from tradepipe.trading.brokers.paper import PaperBroker

__all__ = ["Broker", "BrokerRejection", "Fill", "Mt5Broker", "OrderRequest", "PaperBroker", "Quote"]
