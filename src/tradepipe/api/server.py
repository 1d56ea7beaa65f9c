"""The ``tradepipe api`` process (R8.2): the read side and the gateway in one process.

:func:`serve` composes, on one bus:

- the read side (:class:`ReadSide`): the transactional projections (``read.store``) and the
  analytics tables (``read.analytics``, optional), each kept current by its projector on its
  own thread;
- the command handler (:class:`~tradepipe.services.api_commands.ApiCommandHandler`) and the
  alert rules (:class:`~tradepipe.ops.alerts.AlertRules`), each in a
  :class:`~tradepipe.runtime.runner.ServiceRunner` thread, so commands are answered and
  alerts raised with no other process running (a ``tradepipe service api-commands`` or
  ``alerts`` elsewhere shares the work: same consumer group);
- one :class:`~tradepipe.runtime.tail.BusTail` over every topic from its end, feeding the
  gateway (the answers to commands), the aggregated metrics and the replay requests, and one
  for the dashboard starting ``api.dashboard_history`` records back;
- the FastAPI app (:func:`tradepipe.api.app.create_app`) under uvicorn, with the dashboard's
  router and the aggregated ``/metrics``: the pipeline's metrics from its events
  (:class:`~tradepipe.ops.metrics.EventMetrics` on the tail) and the consumer lag of the
  decision services and the command handler (:class:`~tradepipe.ops.metrics.ConsumerLag`;
  the groups every strategy deploys, so a lag never counts a service that is not there).

**Replay** (``POST /api/v1/replay``, a ReplayRequested on the bus): the read side stops the
projector of each target, empties its store and projects every event on the bus again from
the beginning (the rebuild the ``tradepipe projections rebuild`` command does), then resumes
following the bus. Reads meanwhile see the store filling up again; events published during
the rebuild are projected after it. Rebuilds run one at a time, off the tail's thread.

SIGTERM or SIGINT ends the dashboard streams and stops uvicorn, then the command handler
and the alert rules checkpoint, the projectors stop after their batch, and the stores and
the tail close.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import uvicorn
from prometheus_client import CollectorRegistry

from tradepipe.api.app import create_app
from tradepipe.bus.base import Bus, Record
from tradepipe.config import Settings
from tradepipe.events.codec import get_codec
from tradepipe.events.envelope import Event
from tradepipe.events.types import ReplayRequested
from tradepipe.ops.alerts import AlertRules
from tradepipe.ops.dashboard import DashboardFeed, dashboard_router
from tradepipe.ops.metrics import ConsumerLag, EventMetrics, pipeline_groups
from tradepipe.pipeline import decision_factories, gateway_factories
from tradepipe.read.analytics import AnalyticsProjector, open_analytics_store, rebuild_analytics
from tradepipe.read.projections import ProjectionRunner, open_read_store, rebuild
from tradepipe.runtime.runner import ServiceRunner
from tradepipe.runtime.store import CheckpointStore, EventStore
from tradepipe.runtime.tail import BusTail
from tradepipe.services.api_commands import ApiCommandHandler

log = logging.getLogger(__name__)

GRACEFUL_S = 5  # uvicorn's wait for open connections (dashboard streams) on shutdown
NO_ANALYTICS = "none"


class Projector(Protocol):
    def run(self, stop: threading.Event) -> Any: ...

    def close(self) -> None: ...


class Worker:
    """``work(stop)`` on its own thread until ``stop`` is set; restartable."""

    def __init__(self, name: str, work: Callable[[threading.Event], Any]) -> None:
        self.name = name
        self.work = work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.work(self._stop)
        except Exception:
            log.exception("%s stopped on an error", self.name)

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


@dataclass
class ReadPart:
    """One store of the read side: how to follow the bus into it, and how to rebuild it."""

    name: str  # projections | analytics
    store: Any
    projector: Callable[[], Projector]
    rebuild: Callable[[], Any]
    worker: Worker | None = None

    def start(self) -> None:
        def follow(stop: threading.Event) -> None:
            projector = self.projector()
            try:
                projector.run(stop)
            finally:
                projector.close()

        self.worker = Worker(f"read-{self.name}", follow)
        self.worker.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


class ReadSide:
    """The projections and (optionally) the analytics tables, followed live and rebuilt on a
    ReplayRequested."""

    def __init__(self, bus: Bus, settings: Settings) -> None:
        codec = get_codec(settings.bus.codec)
        batch = settings.read.batch_size
        self.store = open_read_store(settings.read.store, initial_equity=settings.trading.initial_equity)
        self.analytics = None
        self.parts = [ReadPart("projections", self.store,
                               lambda: ProjectionRunner(bus, self.store, codec=codec, batch_size=batch),
                               lambda: rebuild(bus, self.store, codec=codec, batch_size=batch))]
        if settings.read.analytics != NO_ANALYTICS:
            self.analytics = open_analytics_store(settings.read.analytics,
                                                  dead_band=settings.models.dead_band_bps / 1e4)
            self.parts.append(ReadPart("analytics", self.analytics,
                                       lambda: AnalyticsProjector(bus, self.analytics, codec=codec),
                                       lambda: rebuild_analytics(bus, self.analytics, codec=codec)))
        self.rebuilds = 0
        self._rebuilding = threading.Lock()

    def start(self) -> None:
        for part in self.parts:
            part.start()

    def stop(self) -> None:
        for part in self.parts:
            part.stop()

    def close(self) -> None:
        self.stop()
        for part in self.parts:
            part.store.close()

    def rebuild(self, target: str) -> None:
        """Rebuild the parts ``target`` names (all, projections or analytics)."""
        with self._rebuilding:
            for part in self.parts:
                if target in ("all", part.name):
                    log.info("rebuilding the %s from the bus", part.name)
                    part.stop()
                    part.rebuild()
                    part.start()
            self.rebuilds += 1

    def on_event(self, event: Event, record: Record) -> None:
        """BusTail subscriber: a ReplayRequested starts a rebuild on its own thread."""
        if type(event) is ReplayRequested:
            threading.Thread(target=self.rebuild, args=(event.target,), name="read-rebuild", daemon=True).start()

    def health(self) -> dict[str, Any]:
        return {"readSide": {part.name: "running" if part.worker and part.worker.alive else "stopped"
                             for part in self.parts}, "rebuilds": self.rebuilds}


def serve(settings: Settings, bus: Bus, checkpoints: CheckpointStore, *,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Run the API process on ``bus`` until SIGTERM/SIGINT (from the main thread: uvicorn
    installs the signal handlers). ``checkpoints`` keep the command handler's place."""
    codec = get_codec(settings.bus.codec)
    read_side = ReadSide(bus, settings)
    tail = BusTail(bus, codec=codec)
    registry = CollectorRegistry(auto_describe=False)
    metrics = EventMetrics.from_settings(settings)
    lag = ConsumerLag(bus, pipeline_groups([*decision_factories(settings, strategy="ema-cross"),
                                            *gateway_factories(settings)]))
    registry.register(metrics)
    registry.register(lag)
    tail.subscribe(metrics)
    # the dashboard's own tail starts api.dashboard_history records back, so the page opens on
    # recent history (prices, signals, fills, equity) while the metrics count from now
    dashboard_tail = BusTail(bus, codec=codec, history=settings.api.dashboard_history)
    feed = DashboardFeed(dashboard_tail, lag=lambda: _lag_by_group(lag))
    events = EventStore(bus, codec)
    handler = ServiceRunner(ApiCommandHandler(settings), bus, codec=codec, checkpoints=checkpoints,
                            config=settings.runner.runner_config())
    commands = Worker("api-commands", lambda stop: handler.run(stop=stop))
    alert_runner = ServiceRunner(AlertRules.from_settings(settings, lag=lag), bus, codec=codec,
                                 checkpoints=checkpoints, config=settings.runner.runner_config())
    alerts = Worker("alerts", lambda stop: alert_runner.run(stop=stop))
    app = create_app(settings, events=events, tail=tail, read=read_side.store, analytics=read_side.analytics,
                     registry=registry, routers=[dashboard_router(feed)],
                     health=lambda: {"bus": bus.url, "commandHandler": "running" if commands.alive else "stopped",
                                     "alerts": "running" if alerts.alive else "stopped",
                                     **read_side.health()})
    tail.subscribe(read_side.on_event)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.api.host, port=settings.api.port, log_level="info",
                                           timeout_graceful_shutdown=GRACEFUL_S))
    # uvicorn re-raises the signal that stopped it once it is done: with our handler in place
    # (not the default, which kills the process) the shutdown below still runs
    def stop_serving(sig: int, frame: Any) -> None:
        feed.close()  # ends the dashboard streams now, rather than after uvicorn's grace period
        server.handle_exit(sig, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_serving)
    try:
        tail.start()
        dashboard_tail.start()
        read_side.start()
        commands.start()
        alerts.start()
        if on_ready is not None:
            _announce_when_started(server, on_ready)
        server.run()
    finally:
        for worker, runner in ((commands, handler), (alerts, alert_runner)):
            worker.stop()
            runner.close()
        feed.close()
        dashboard_tail.stop()
        tail.stop()
        read_side.close()
        events.close()


def _lag_by_group(lag: ConsumerLag) -> dict[str, int]:
    behind: dict[str, int] = {}
    for (group, _, _), records in lag.lags().items():
        behind[group] = behind.get(group, 0) + records
    return behind


def _announce_when_started(server: uvicorn.Server, on_ready: Callable[[str], None]) -> None:
    """Call ``on_ready(url)`` once uvicorn listens (with the real port when it was 0)."""
    def wait() -> None:
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        on_ready(f"http://{host}:{port}")

    threading.Thread(target=wait, name="api-ready", daemon=True).start()
