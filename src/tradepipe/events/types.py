"""Every event type of the pipeline (R1.1), as frozen typed structs.

Payload shapes follow the seed where it has an example (MarketDataReceived's ``data``,
FeaturesCalculated's ``features``, PredictionGenerated's ``prediction`` and ``model``); the
rest are the smallest shapes the spec's later sections need. New fields must come with a
default, or the schema registry's BACKWARD check refuses them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec

from tradepipe.events.envelope import Event, Metadata
from tradepipe.events.upcasting import UPCASTERS

Direction = Literal["BUY", "SELL", "HOLD"]
Side = Literal["BUY", "SELL"]


class Payload(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """Base of nested payload structs: camelCase on the wire, frozen."""


# --- topics (R2.4) -------------------------------------------------------------------------

MARKET_DATA = "market-data-events"
FEATURES = "features-calculated"
PREDICTIONS = "predictions-generated"
SIGNALS = "trading-signals"
VALIDATED = "validated-signals"
ORDERS = "order-events"
PERFORMANCE = "performance-events"
SYSTEM = "system-events"
API_REQUESTS = "api-requests"
API_RESPONSES = "api-responses"
DEAD_LETTER = "dead-letter"

ALL_TOPICS = (
    MARKET_DATA, FEATURES, PREDICTIONS, SIGNALS, VALIDATED, ORDERS, PERFORMANCE,
    SYSTEM, API_REQUESTS, API_RESPONSES, DEAD_LETTER,
)


# --- market data ---------------------------------------------------------------------------

class TickData(Payload, frozen=True, kw_only=True):
    bid: float
    ask: float
    volume: float = 0.0
    timestamp: datetime


class MarketDataReceived(Event, frozen=True, kw_only=True):
    topic = MARKET_DATA
    source: str
    data: TickData


class OHLC(Payload, frozen=True, kw_only=True):
    open: float
    high: float
    low: float
    close: float


class BarClosed(Event, frozen=True, kw_only=True):
    topic = MARKET_DATA
    timeframe: str
    bar_time: datetime  # the bar's open time, UTC
    bid: OHLC
    ask: OHLC
    mid: OHLC
    tick_count: int
    spread_mean: float
    spread_max: float


# --- features and models -------------------------------------------------------------------

class FeaturesMetadata(Metadata, frozen=True, kw_only=True):
    calculation_time: str = ""  # the seed writes e.g. "15ms"


class FeaturesCalculated(Event, frozen=True, kw_only=True):
    topic = FEATURES
    timeframe: str
    bar_time: datetime | None = None
    group: str = ""  # feature-engineering | technical-analysis | market-microstructure
    features: dict[str, float | None]
    metadata: FeaturesMetadata = FeaturesMetadata()


class Prediction(Payload, frozen=True, kw_only=True):
    direction: Direction
    confidence: float
    target_price: float | None = None
    stop_loss: float | None = None
    time_horizon: str = ""


class ModelInfo(Payload, frozen=True, kw_only=True):
    name: str
    accuracy: float | None = None
    inference_time: str = ""


class PredictionGenerated(Event, frozen=True, kw_only=True):
    topic = PREDICTIONS
    schema_version = "1.1"
    prediction: Prediction
    model: ModelInfo
    fallback: bool = False  # True when a circuit breaker's fallback produced it
    # 1.1: the bar predicted from and its mid close, so the ensemble can score the prediction
    # once the horizon has passed
    timeframe: str = ""
    bar_time: datetime | None = None
    price: float | None = None


class Contribution(Payload, frozen=True, kw_only=True):
    model: str
    direction: Direction
    confidence: float
    weight: float
    # TradingSignalGenerated 1.1: the service that answered, and whether its breaker's
    # fallback (last good prediction or the trend rule, named in ``model``) made the answer
    producer: str = ""
    fallback: bool = False


class TradingSignalGenerated(Event, frozen=True, kw_only=True):
    topic = SIGNALS
    schema_version = "1.1"
    direction: Direction
    confidence: float
    timeframe: str = ""
    contributors: list[Contribution] = []
    missing_models: list[str] = []
    # 1.1: the bar and mid close the signal was made at, and the models' consensus targets
    bar_time: datetime | None = None
    price: float | None = None
    target_price: float | None = None
    stop_loss: float | None = None


# 1.0 -> 1.1 of these only added optional fields: an old document reads as it is.
@UPCASTERS.register("PredictionGenerated", "1.0", "1.1")
@UPCASTERS.register("TradingSignalGenerated", "1.0", "1.1")
@UPCASTERS.register("SignalValidated", "1.0", "1.1")
@UPCASTERS.register("SignalRejected", "1.0", "1.1")
@UPCASTERS.register("OrderPlaced", "1.0", "1.1")
@UPCASTERS.register("OrderExecuted", "1.0", "1.1")
@UPCASTERS.register("PositionClosed", "1.0", "1.1")
@UPCASTERS.register("AlertRaised", "1.0", "1.1")
@UPCASTERS.register("TradingCommand", "1.0", "1.1")  # and a command value
def _added_optional_fields(doc: dict) -> dict:
    return doc


class RuleVerdict(Payload, frozen=True, kw_only=True):
    rule: str
    passed: bool
    detail: str = ""


class _SignalVerdict(Event, frozen=True, kw_only=True):
    """What the validator decided about a signal, with every rule's verdict (R7.1)."""

    topic = VALIDATED
    schema_version = "1.1"
    signal_id: uuid.UUID
    direction: Direction
    confidence: float
    verdicts: list[RuleVerdict] = []
    # 1.1: the signal's bar, price and targets, so the trading engine needs no second topic
    timeframe: str = ""
    bar_time: datetime | None = None
    price: float | None = None
    target_price: float | None = None
    stop_loss: float | None = None


class SignalValidated(_SignalVerdict, frozen=True, kw_only=True):
    pass


class SignalRejected(_SignalVerdict, frozen=True, kw_only=True):
    pass


# --- orders and positions ------------------------------------------------------------------
#
# Every order event carries its orderId. A position is identified by the orderId that opened
# it (positionId); its closing order names it too. Exits (stop-loss, take-profit, horizon,
# reversal, kill switch, compensation) carry the correlationId of the signal that opened the
# position, so one correlationId follows a trade from its tick to its close.

OrderReason = Literal[
    "signal", "stop-loss", "take-profit", "horizon", "reversal", "kill-switch", "compensation", "manual",
]


class OrderPlaced(Event, frozen=True, kw_only=True):
    topic = ORDERS
    schema_version = "1.1"
    order_id: str
    side: Side
    volume: float
    order_type: Literal["MARKET", "LIMIT", "STOP"] = "MARKET"
    price: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    broker: str = "paper"
    # 1.1: the position the order opens (its own orderId) or closes, and why it was placed
    position_id: str = ""
    reason: OrderReason = "signal"


class OrderExecuted(Event, frozen=True, kw_only=True):
    topic = ORDERS
    schema_version = "1.1"
    order_id: str
    side: Side
    volume: float
    price: float
    commission: float = 0.0
    slippage: float = 0.0
    # 1.1: see OrderPlaced
    position_id: str = ""
    broker: str = "paper"


class OrderRejected(Event, frozen=True, kw_only=True):
    topic = ORDERS
    order_id: str
    reason: str


class OrderCancelled(Event, frozen=True, kw_only=True):
    topic = ORDERS
    order_id: str
    reason: str = ""


class PositionClosed(Event, frozen=True, kw_only=True):
    topic = ORDERS
    schema_version = "1.1"
    position_id: str
    side: Side
    volume: float
    entry_price: float
    exit_price: float
    pnl: float  # realized, in the quote currency, after commissions of both legs
    reason: str = ""
    # 1.1: the closing order and when the position was opened
    order_id: str = ""
    opened_at: datetime | None = None


class SagaCompleted(Event, frozen=True, kw_only=True):
    """How one trading workflow (keyed by correlationId) ended (R3.4).

    COMPLETED: an order was filled. REJECTED: the workflow ended by a decision (HOLD, a rule,
    a risk check). FAILED: a step failed after an order was placed (compensations ran).
    TIMED_OUT: a step did not finish in time (compensations ran if an order was placed).
    """

    topic = ORDERS
    outcome: Literal["COMPLETED", "REJECTED", "FAILED", "TIMED_OUT"]
    steps: list[str] = []  # the steps that completed, in order
    failed_step: str = ""
    reason: str = ""
    compensations: list[str] = []  # in the order they were issued (reverse of the steps)
    order_id: str = ""


class PerformanceCalculated(Event, frozen=True, kw_only=True):
    topic = PERFORMANCE
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    trades: int = 0
    metrics: dict[str, float | None] = {}  # sharpe, sortino, max_drawdown, win_rate, ...


# --- system, API, storage ------------------------------------------------------------------

class ConfigurationUpdated(Event, frozen=True, kw_only=True):
    topic = SYSTEM
    changes: dict[str, Any]


class TradingCommand(Event, frozen=True, kw_only=True):
    """A command to the trading engine: halt or resume trading (an operator; resume is the
    only way out of a kill switch), a saga's compensation: cancel an order or flatten the
    position it opened, or (1.1) a manual ``order`` of ``side`` on the event's symbol:
    ``volume`` units, or the sizing rule's when None."""

    topic = SYSTEM
    schema_version = "1.1"
    command: Literal["halt", "resume", "cancel", "flatten", "order"]
    order_id: str = ""
    reason: str = ""
    # 1.1: the manual order
    side: Side | None = None
    volume: float | None = None


class ReplayRequested(Event, frozen=True, kw_only=True):
    """Rebuild read-side projections from the bus (an operator, through the API gateway):
    ``projections`` (the transactional store), ``analytics`` (the ClickHouse tables) or
    ``all``. The process serving the read side (``tradepipe api``) acts on it."""

    topic = SYSTEM
    target: Literal["all", "projections", "analytics"] = "all"
    reason: str = ""


class TradingStateChanged(Event, frozen=True, kw_only=True):
    topic = SYSTEM
    state: Literal["ACTIVE", "HALTED"]
    reason: str = ""
    equity: float | None = None
    drawdown: float | None = None  # fraction of the peak equity


class CircuitBreakerStateChanged(Event, frozen=True, kw_only=True):
    topic = SYSTEM
    breaker: str
    from_state: Literal["CLOSED", "OPEN", "HALF_OPEN"]
    to_state: Literal["CLOSED", "OPEN", "HALF_OPEN"]
    failures: int = 0
    reason: str = ""


class AlertRaised(Event, frozen=True, kw_only=True):
    topic = SYSTEM
    schema_version = "1.1"
    rule: str
    severity: Literal["info", "warning", "critical"]
    message: str
    value: float | None = None
    threshold: float | None = None
    # 1.1: what the alert is about (a service, a partition, a model; "" = the whole pipeline),
    # so one rule can fire for several subjects and each is resolved on its own
    subject: str = ""


class AlertResolved(Event, frozen=True, kw_only=True):
    """The condition of an AlertRaised (same rule and subject) has cleared; ``value`` is the
    figure that cleared it."""

    topic = SYSTEM
    rule: str
    subject: str = ""
    message: str = ""
    value: float | None = None


class APIRequestReceived(Event, frozen=True, kw_only=True):
    topic = API_REQUESTS
    request_id: str
    method: str
    path: str
    body: Any = None
    sync: bool = True


class APIResponseReady(Event, frozen=True, kw_only=True):
    topic = API_RESPONSES
    request_id: str
    status: int
    body: Any = None


class DatabaseUpdated(Event, frozen=True, kw_only=True):
    topic = SYSTEM
    store: str
    table: str
    status: Literal["success", "failure"] = "success"
    record_id: str | None = None


class DeadLetter(Event, frozen=True, kw_only=True):
    """A record that could not be decoded or handled, kept with the reason and its bytes."""

    topic = DEAD_LETTER
    reason: str
    error_type: str = ""
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    original_type: str | None = None
    original: bytes = b""


EVENT_TYPES: tuple[type[Event], ...] = (
    MarketDataReceived, BarClosed, FeaturesCalculated, PredictionGenerated,
    TradingSignalGenerated, SignalValidated, SignalRejected, OrderPlaced, OrderExecuted,
    OrderRejected, OrderCancelled, PositionClosed, SagaCompleted, PerformanceCalculated,
    ConfigurationUpdated, TradingCommand, ReplayRequested, TradingStateChanged, CircuitBreakerStateChanged,
    AlertRaised, AlertResolved, APIRequestReceived, APIResponseReady, DatabaseUpdated, DeadLetter,
)
EVENT_TYPES_BY_NAME: dict[str, type[Event]] = {t.__name__: t for t in EVENT_TYPES}
