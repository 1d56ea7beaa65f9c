"""The API gateway's FastAPI application (R8.2): :func:`create_app`.

Everything it serves comes in as a dependency, so tests and the ``tradepipe api`` process
build it the same way: the settings (keys, rate limit, sync timeout, the audit log's path),
the bus (an :class:`EventStore` to publish requests and a :class:`BusTail` to see responses),
the read side (a :class:`ReadModel` and, optionally, :class:`AnalyticsQueries`), a Prometheus
registry for ``/metrics``, and extra routers (the dashboard's).

Routes, all JSON (camelCase, like the events):

- reads under ``/api/v1``: ``prices``, ``prices/{symbol}``, ``positions?status=``,
  ``portfolio``, ``trades``, ``orders``, ``orders/{id}``, ``orders/{id}/explain`` (the audit
  log), ``performance``, ``predictions`` and ``analytics/ohlc|hit-rate|pnl-by-day`` (the
  analytics store; 503 without one); no key needed;
- commands under ``/api/v1`` (POST, API key required): ``config``, ``orders``,
  ``trading/halt``, ``trading/resume``, ``replay``; each is published as an APIRequestReceived
  and answered by the command handler's APIResponseReady. ``?sync=true`` waits for that answer
  (up to ``api.sync_timeout_s``, then 504) and returns its status and body; otherwise 202
  with the request id and ``GET /api/v1/requests/{id}`` (key required) tells pending or done;
- ``/health``, ``/metrics`` (Prometheus text), ``/openapi.json``, ``/docs``.

Every ``/api/v1`` route is rate limited per client (:mod:`tradepipe.api.limits`); health,
metrics and the spec are not (probes and scrapers poll them). Problems are 4xx with a JSON
body ``{"detail": ...}`` naming them; 503 when the read store is unreachable.

(No ``from __future__ import annotations`` here: the command routes are made in a loop and
FastAPI must see each route's real body model in its signature.)
"""

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib.metadata import version
from typing import Annotated, Any, Literal, Optional

import msgspec
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from tradepipe.api.auth import KeyRing, require_key
from tradepipe.api.commands import API_PREFIX, COMMANDS, SYMBOL_PATTERN, CommandBody, command_path
from tradepipe.api.gateway import CommandGateway
from tradepipe.api.limits import RateLimiter, rate_limited
from tradepipe.config import Settings
from tradepipe.read.audit_log import AuditLog, AuditLogError, UnknownOrderError
from tradepipe.read.model import (
    AnalyticsQueries, Candle, DailyPnl, HourlyHitRate, OrderView, PerformanceView, PortfolioView, PositionView,
    PredictionView, PriceView, ReadModel, TradeView,
)
from tradepipe.read.sql import StoreUnavailableError
from tradepipe.runtime.store import EventStore
from tradepipe.runtime.tail import BusTail

log = logging.getLogger(__name__)

#: the views returned as they are, whose JSON Schemas the spec gets from msgspec
VIEWS = (PriceView, PositionView, PortfolioView, TradeView, OrderView, PerformanceView, Candle, HourlyHitRate,
         DailyPnl, PredictionView)
_SCHEMAS, _COMPONENTS = msgspec.json.schema_components(VIEWS, ref_template="#/components/schemas/{name}")
VIEW_SCHEMA = dict(zip(VIEWS, _SCHEMAS))
MAX_LIMIT = 1000
ANALYTICS_YEARS = (1900, 2299)  # what the analytics store's times can hold


class Problem(BaseModel):
    """The body of every 4xx/5xx answer the gateway makes itself."""

    detail: Any


class Published(BaseModel):
    type: str
    eventId: str


class CommandAnswer(BaseModel):
    """The command handler's answer to an accepted command (sync=true); commands add their own
    fields (an order its ``orderId`` and ``orderUrl``)."""

    model_config = ConfigDict(extra="allow")
    command: str
    published: list[Published]


class Accepted(BaseModel):
    requestId: str
    statusUrl: str


class RequestStatus(BaseModel):
    requestId: str
    method: str
    path: str
    submittedAt: str
    status: Literal["pending", "done"]
    response: Optional[dict[str, Any]] = None


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem} for code in codes}


def _view(view_type: type, *, many: bool = False, errors: Sequence[int] = ()) -> dict[str, Any]:
    """Route options of a route answering a view (or a list of them) encoded by msgspec."""
    schema = VIEW_SCHEMA[view_type]
    if many:
        schema = {"type": "array", "items": schema}
    return {"responses": {200: {"content": {"application/json": {"schema": schema}}}, **_problems(429, *errors)},
            "response_class": Response}


def _json(value: Any) -> Response:
    return Response(msgspec.json.encode(value), media_type="application/json")


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, what)


# -- dependencies -------------------------------------------------------------------------------

def read_model(request: Request) -> ReadModel:
    return request.app.state.read


def analytics_queries(request: Request) -> AnalyticsQueries:
    analytics = request.app.state.analytics
    if analytics is None:
        raise HTTPException(503, "no analytics store in this gateway (start `tradepipe api` with --analytics URL)")
    return analytics


def gateway(request: Request) -> CommandGateway:
    return request.app.state.gateway


Read = Annotated[ReadModel, Depends(read_model)]
Analytics = Annotated[AnalyticsQueries, Depends(analytics_queries)]
Symbol = Annotated[str, Path(pattern=SYMBOL_PATTERN, description="e.g. EURUSD")]
SymbolFilter = Annotated[Optional[str], Query(pattern=SYMBOL_PATTERN, description="only this symbol")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="most recent first, at most this many")]
OrderId = Annotated[str, Path(min_length=1, max_length=64, description="as in OrderPlaced, e.g. ord-3f2a...")]


# -- reads --------------------------------------------------------------------------------------

def read_routes() -> APIRouter:
    router = APIRouter(tags=["read"])

    @router.get("/prices", summary="Latest price of every symbol", **_view(PriceView, many=True))
    def prices(read: Read) -> Response:
        return _json(read.prices())

    @router.get("/prices/{symbol}", summary="Latest price of one symbol", **_view(PriceView, errors=[404, 422]))
    def price(symbol: Symbol, read: Read) -> Response:
        found = read.price(symbol)
        if found is None:
            raise _not_found(f"no price for symbol {symbol!r}: no tick of it has been seen")
        return _json(found)

    @router.get("/positions", summary="Positions (open by default)", **_view(PositionView, many=True, errors=[422]))
    def positions(read: Read, status: Annotated[Literal["open", "closed", "all"], Query()] = "open") -> Response:
        rows = read.positions(open_only=status == "open")
        if status == "closed":
            rows = [p for p in rows if p.status == "CLOSED"]
        return _json(rows)

    @router.get("/portfolio", summary="Equity, PnL and trading state", **_view(PortfolioView))
    def portfolio(read: Read) -> Response:
        return _json(read.portfolio())

    @router.get("/trades", summary="Fills, most recent first", **_view(TradeView, many=True, errors=[422]))
    def trades(read: Read, symbol: SymbolFilter = None, limit: Limit = 100) -> Response:
        return _json(read.trades(symbol=symbol, limit=limit))

    @router.get("/orders", summary="Orders, most recent first", **_view(OrderView, many=True, errors=[422]))
    def orders(read: Read, symbol: SymbolFilter = None, limit: Limit = 100) -> Response:
        return _json(read.orders(symbol=symbol, limit=limit))

    @router.get("/orders/{order_id}", summary="One order", **_view(OrderView, errors=[404, 422]))
    def order(order_id: OrderId, read: Read) -> Response:
        found = read.order(order_id)
        if found is None:
            raise _not_found(f"no order {order_id!r}")
        return _json(found)

    @router.get("/orders/{order_id}/explain", summary="Why an order was placed (the audit log)",
                responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}},
                           **_problems(404, 422, 429)}, response_class=Response)
    def explain(order_id: OrderId, request: Request) -> Response:
        try:
            audit = AuditLog(request.app.state.settings.audit.path, create=False)
        except AuditLogError as exc:
            raise _not_found(f"no audit log to explain orders from: {exc}") from None
        try:
            return _json(audit.explain(order_id))
        except UnknownOrderError as exc:
            raise _not_found(str(exc)) from None
        finally:
            audit.close()

    @router.get("/performance", summary="Latest performance figures", **_view(PerformanceView, errors=[404]))
    def performance(read: Read) -> Response:
        found = read.performance()
        if found is None:
            raise _not_found("no performance figures yet: no PerformanceCalculated event has been seen")
        return _json(found)

    @router.get("/predictions", summary="Model predictions, most recent first",
                **_view(PredictionView, many=True, errors=[422, 503]))
    def predictions(analytics: Analytics, symbol: SymbolFilter = None,
                    model: Annotated[Optional[str], Query(max_length=64)] = None, limit: Limit = 100) -> Response:
        return _json(analytics.predictions(symbol=symbol, model=model, limit=limit))

    @router.get("/analytics/ohlc", summary="OHLC candles of mid prices, any timeframe",
                **_view(Candle, many=True, errors=[422, 503]))
    def ohlc(analytics: Analytics, symbol: Annotated[str, Query(pattern=SYMBOL_PATTERN)],
             timeframe: Annotated[str, Query(pattern=r"^[1-9][0-9]{0,3}[smhd]$", description="e.g. 1m, 15m, 4h, 1d")] = "1m",
             start: Optional[datetime] = None, end: Optional[datetime] = None, limit: Limit = MAX_LIMIT) -> Response:
        for name, at in (("start", start), ("end", end)):
            if at is not None and not ANALYTICS_YEARS[0] <= at.year <= ANALYTICS_YEARS[1]:
                raise HTTPException(422, f"{name} ({at.isoformat()}) must be within the years {ANALYTICS_YEARS[0]}.."
                                         f"{ANALYTICS_YEARS[1]} (ClickHouse's DateTime64)")
        if start is not None and end is not None and start >= end:
            raise HTTPException(422, f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
        return _json(analytics.ohlc(symbol, timeframe, start, end, limit))

    @router.get("/analytics/hit-rate", summary="Model hit rate by UTC hour",
                **_view(HourlyHitRate, many=True, errors=[422, 503]))
    def hit_rate(analytics: Analytics, model: Annotated[Optional[str], Query(max_length=64)] = None) -> Response:
        return _json(analytics.hit_rate_by_hour(model))

    @router.get("/analytics/pnl-by-day", summary="Realized PnL by day",
                **_view(DailyPnl, many=True, errors=[422, 503]))
    def pnl_by_day(analytics: Analytics, symbol: SymbolFilter = None) -> Response:
        return _json(analytics.pnl_by_day(symbol))

    return router


# -- commands -----------------------------------------------------------------------------------

Sync = Annotated[bool, Query(description="wait for the command handler's answer and return it "
                                         "(504 after api.sync_timeout_s)")]
COMMAND_PROBLEMS = _problems(401, 403, 422, 429, 504)


def command_routes() -> APIRouter:
    router = APIRouter(tags=["commands"])
    for command, body_type in COMMANDS.items():
        _add_command(router, command, body_type)

    @router.get("/requests/{request_id}", summary="A command request: pending or done, with its answer",
                response_model=RequestStatus, responses=_problems(401, 403, 404, 422, 429))
    def request_status(request_id: Annotated[str, Path(max_length=64)],
                       _key: Annotated[str, Security(require_key)], commands: Annotated[CommandGateway, Depends(gateway)]):
        tracked = commands.tracked(request_id)
        if tracked is None:
            raise _not_found(f"no request {request_id!r}: unknown here, or older than the last {commands.keep} "
                             "requests this gateway keeps")
        return tracked.status()

    return router


def _add_command(router: APIRouter, command: str, body_type: type[CommandBody]) -> None:
    # commands whose every field has a default may be sent without a body
    optional = all(not f.is_required() for f in body_type.model_fields.values())
    path = command_path(command)

    async def post_command(request: Request, key_id: Annotated[str, Security(require_key)],
                           body: Annotated[Optional[body_type], Body()] = None,
                           sync: Sync = False) -> Response:
        commands: CommandGateway = request.app.state.gateway
        payload = (body or body_type()).model_dump(mode="json")
        loop = asyncio.get_running_loop() if sync else None
        tracked, answer = await run_in_threadpool(commands.submit, "POST", path, payload, sync=sync, loop=loop)
        request_id = tracked.request.request_id
        log.info("%s by key %s: request %s", path, key_id, request_id)  # the key's id, never the key
        status_url = command_path(f"requests/{request_id}")
        if not sync:
            return JSONResponse({"requestId": request_id, "statusUrl": status_url}, status_code=202,
                                headers={"Location": status_url})
        timeout_s = request.app.state.settings.api.sync_timeout_s
        response = await commands.wait(answer, timeout_s)
        if response is None:
            return JSONResponse({"detail": f"no answer to request {request_id} within {timeout_s:g} s (is the "
                                           "command handler running?); it may still be answered: see statusUrl",
                                 "requestId": request_id, "statusUrl": status_url}, status_code=504)
        return JSONResponse(response.body, status_code=response.status, headers={"X-Request-Id": request_id})

    post_command.__name__ = "post_" + command.replace("/", "_")
    if not optional:  # the body is required: no default in the signature FastAPI reads
        signature = inspect.signature(post_command)
        post_command.__signature__ = signature.replace(parameters=[
            p.replace(default=inspect.Parameter.empty, annotation=Annotated[body_type, Body()]) if p.name == "body" else p
            for p in signature.parameters.values()])
    router.add_api_route(path.removeprefix(API_PREFIX), post_command, methods=["POST"],
                         summary=(body_type.__doc__ or command).split("\n")[0],
                         responses={200: {"model": CommandAnswer, "description": "the command handler's answer (sync=true)"},
                                    202: {"model": Accepted, "description": "published (without sync)"},
                                    **COMMAND_PROBLEMS})


# -- the application ----------------------------------------------------------------------------

def create_app(
    settings: Settings,
    *,
    events: EventStore,
    tail: BusTail,
    read: ReadModel,
    analytics: AnalyticsQueries | None = None,
    registry: CollectorRegistry | None = None,
    routers: Sequence[APIRouter] = (),
    health: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The gateway over these parts. ``tail`` must follow ``api-responses`` (the gateway
    subscribes to it); ``health`` adds details to ``/health``. Raises ConfigError for
    malformed ``api.keys``."""
    app = FastAPI(title="tradepipe API", version=version("tradepipe"),
                  description="Read the projections; send commands as events (R8.2).")
    state = app.state
    state.settings = settings
    state.keys = KeyRing(settings.api.keys)
    state.limiter = RateLimiter(settings.api.rate_limit_per_minute)
    state.read = read
    state.analytics = analytics
    state.gateway = CommandGateway(events, tail)
    state.registry = registry or CollectorRegistry()

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(rate_limited)])
    api.include_router(read_routes())
    api.include_router(command_routes())
    app.include_router(api)
    for router in routers:
        app.include_router(router)

    @app.get("/health", tags=["operations"], summary="Liveness and what this gateway serves")
    def health_check() -> dict[str, Any]:
        return {"status": "ok", "analytics": analytics is not None, **(health() if health is not None else {})}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StoreUnavailableError)
    async def store_unavailable(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
    return app
