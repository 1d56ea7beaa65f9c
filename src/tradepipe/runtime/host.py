"""One service as its own OS process (R9.1, ``tradepipe service NAME``): the loop, its
/health and /metrics endpoints, and a clean stop.

:class:`ServiceHost` runs anything with a ``step()`` (a :class:`ServiceRunner`, or the data
bridge's replay) until SIGTERM/SIGINT, then lets it finish its batch and checkpoint. While it
runs, an HTTP server on the service's port answers:

- ``GET /health``: JSON with the service, its instance and group, its state (starting,
  running, stopping, stopped, failed) and its counters; 503 unless running;
- ``GET /metrics``: Prometheus text, read from the runner's counters at scrape time: those
  of its ``stats``, and for a service runner the records processed per topic, the handling
  time histogram, the consumer lag and the circuit breakers (:mod:`tradepipe.ops.metrics`).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tradepipe.ops.metrics import ServiceCollector

log = logging.getLogger(__name__)


class Steppable(Protocol):
    """What a host runs: one unit of work per call, a final checkpoint, counters."""

    stats: msgspec.Struct

    def step(self) -> int: ...

    def checkpoint(self) -> Any: ...

    def close(self) -> None: ...


class RunnerCollector:
    """Prometheus metrics from a runner's counters: every field of its ``stats`` becomes
    ``tradepipe_<field>_total{service, instance}``, plus the host's up-time and state."""

    def __init__(self, host: ServiceHost) -> None:
        self.host = host

    def describe(self) -> Iterable:
        return ()

    def collect(self) -> Iterable:
        host = self.host
        labels = ["service", "instance"]
        values = [host.service, host.instance]
        for field in host.runner.stats.__struct_fields__:
            family = CounterMetricFamily(f"tradepipe_{field}", f"{field.replace('_', ' ')} since start", labels=labels)
            family.add_metric(values, getattr(host.runner.stats, field))
            yield family
        up = GaugeMetricFamily("tradepipe_up", "1 while the service loop runs", labels=labels)
        up.add_metric(values, 1.0 if host.state == "running" else 0.0)
        yield up
        uptime = GaugeMetricFamily("tradepipe_uptime_seconds", "seconds since the process started", labels=labels)
        uptime.add_metric(values, time.monotonic() - host.started)
        yield uptime


class ServiceHost:
    def __init__(self, runner: Steppable, *, service: str, instance: str, group: str | None,
                 port: int | None, host: str = "127.0.0.1",
                 details: Callable[[], dict[str, Any]] | None = None) -> None:
        self.runner = runner
        self.service = service
        self.instance = instance
        self.group = group
        self.state = "starting"
        self.started = time.monotonic()
        # the runner's own event when it has one, so a stop also ends its bus retries
        self.stop = getattr(runner, "stopping", None) or threading.Event()
        self._details = details
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RunnerCollector(self))
        if hasattr(runner, "meter"):  # a service runner (the data bridge's replay has no inputs)
            self.registry.register(ServiceCollector(runner, service))
        self._http = ThreadingHTTPServer((host, port), self._handler_class()) if port is not None else None
        if self._http is not None:
            self._http.daemon_threads = True

    @property
    def port(self) -> int | None:
        return None if self._http is None else self._http.server_address[1]

    def health(self) -> dict[str, Any]:
        body = {"service": self.service, "instance": self.instance, "group": self.group, "state": self.state,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "stats": msgspec.to_builtins(self.runner.stats)}
        if self._details is not None:
            body.update(self._details())
        return body

    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Step until SIGTERM/SIGINT (or ``until()`` is true after an idle step), then
        checkpoint and close. Installs the signal handlers, so call it from the main thread."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        if self._http is not None:
            threading.Thread(target=self._http.serve_forever, name="health", daemon=True).start()
        self.state = "running"
        try:
            while not self.stop.is_set():
                if self.runner.step() == 0 and until is not None and until():
                    break
            self.state = "stopping"
            self.runner.checkpoint()
            self.state = "stopped"
        except BaseException:
            self.state = "failed"
            raise
        finally:
            self.runner.close()
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    body = json.dumps(host.health()).encode()
                    self._reply(200 if host.state == "running" else 503, "application/json", body)
                elif path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(host.registry))
                else:
                    self._reply(404, "text/plain", b"not found: try /health or /metrics\n")

            def _reply(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                log.debug("%s " + format, self.address_string(), *args)

        return Handler
