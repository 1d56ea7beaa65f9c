"""A whole deployment as OS processes, one per service (``tradepipe service NAME``), for the
distributed end-to-end and fault tests; and the in-process run they are compared with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from infra import free_port

from tradepipe.bus import open_bus
from tradepipe.config import load_settings
from tradepipe.events.types import MARKET_DATA, ORDERS, MarketDataReceived, OrderExecuted, OrderPlaced, OrderRejected, PositionClosed
from tradepipe.pipeline import RunRequest, run_pipeline
from tradepipe.runtime.store import EventStore

ORDER_TYPES = (OrderPlaced, OrderExecuted, OrderRejected, PositionClosed)


@dataclass
class Process:
    name: str
    command: list[str]
    port: int
    log: Path
    popen: subprocess.Popen | None = None

    def start(self, env: dict[str, str], cwd: Path) -> None:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                return json.loads(reply.read())
        except Exception:
            return None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout_s)


@dataclass
class Deployment:
    """Every service of the pipeline as its own process on one bus, plus the data bridge."""

    workdir: Path
    config: Path
    services: Sequence[str]
    bridge_args: list[str]
    processes: dict[str, Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name in [*self.services, "data-bridge"]:
            port = free_port()
            command = [sys.executable, "-m", "tradepipe", "service", name, "--config", str(self.config),
                       "--port", str(port)]
            if name == "data-bridge":
                command += self.bridge_args
            self.processes[name] = Process(name, command, port, self.workdir / f"{name}.log")

    def start_services(self, timeout_s: float = 120) -> None:
        for name in self.services:
            self.processes[name].start(self.env, self.workdir)
        deadline = time.monotonic() + timeout_s
        for name in self.services:
            while (self.processes[name].health() or {}).get("state") != "running":
                self.check_alive(name)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not healthy after {timeout_s} s; log:\n{self.tail(name)}")
                time.sleep(0.2)

    def start_bridge(self) -> None:
        self.processes["data-bridge"].start(self.env, self.workdir)

    def restart(self, name: str, *, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.signal(sig)
        process.wait(30)
        process.start(self.env, self.workdir)

    def bridge_items(self) -> int:
        return ((self.processes["data-bridge"].health() or {}).get("stats") or {}).get("items", 0)

    def wait_bridge(self, timeout_s: float) -> None:
        bridge = self.processes["data-bridge"]
        deadline = time.monotonic() + timeout_s
        while bridge.alive():
            for name in self.services:
                self.check_alive(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replay did not finish in {timeout_s} s; bridge log:\n{self.tail('data-bridge')}")
            time.sleep(0.5)
        assert bridge.popen.returncode == 0, self.tail("data-bridge")

    def check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.popen is not None and process.popen.poll() not in (None, 0):
            raise AssertionError(f"{name} exited with {process.popen.returncode}; log:\n{self.tail(name)}")

    def stop(self) -> dict[str, int]:
        """SIGTERM everything still running; exit codes by name."""
        for process in self.processes.values():
            process.signal(signal.SIGTERM)
        codes = {}
        for name, process in self.processes.items():
            if process.popen is not None:
                try:
                    codes[name] = process.wait(60)
                except subprocess.TimeoutExpired:
                    process.popen.kill()
                    codes[name] = process.wait(10)
        return codes

    def tail(self, name: str, lines: int = 40) -> str:
        log = self.processes[name].log
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def events_of(bus_url: str, topic: str, types: tuple[type, ...], options: dict | None = None) -> tuple[list, int]:
    """The distinct events of ``types`` on ``topic`` (first copy of each eventId, in order) and
    how many copies were dropped as re-deliveries."""
    bus = open_bus(bus_url, options=options)
    try:
        seen, out, copies = set(), [], 0
        for stored in EventStore(bus).replay(topic):
            event = stored.event
            if type(event) not in types:
                continue
            if event.event_id in seen:
                copies += 1
                continue
            seen.add(event.event_id)
            out.append(event)
        return out, copies
    finally:
        bus.close()


def in_process(config: Path, paths: list[Path], start, end, registry: Path) -> dict[str, list]:
    """The same data through ``run_pipeline`` on a memory bus: what the deployment must match."""
    settings = load_settings(config, bus={"url": "memory://in-process-reference"})
    bus = open_bus(settings.bus.url)
    try:
        run_pipeline(RunRequest(paths=paths, settings=settings, start=start, end=end), bus, registry=registry)
        store = EventStore(bus)
        return {"orders": [s.event for s in store.replay(ORDERS) if type(s.event) in ORDER_TYPES],
                "ticks": [s.event for s in store.replay(MARKET_DATA) if type(s.event) is MarketDataReceived]}
    finally:
        bus.close()


def order_rows(events: list) -> list[tuple]:
    """What must be equal between two runs: every event whole (ids, causal ids, figures)."""
    return sorted((str(e.event_id), type(e).__name__, e.symbol, msgspec.json.encode(e)) for e in events)


def duplicate_orders(events: list) -> Counter:
    placed = Counter(e.order_id for e in events if type(e) is OrderPlaced)
    return Counter({order: n for order, n in placed.items() if n > 1})


def describe_difference(got: list, expected: list) -> str:
    """The order events only one side has, by time: what a failing comparison prints."""
    got_rows, expected_rows = set(order_rows(got)), set(order_rows(expected))
    by_id = {str(e.event_id): e for e in [*got, *expected]}
    lines = [f"{len(got_rows)} events vs {len(expected_rows)} in process"]
    for sign, rows in (("+ distributed", got_rows - expected_rows), ("- in process", expected_rows - got_rows)):
        for row in sorted(rows, key=lambda r: by_id[r[0]].timestamp)[:15]:
            event = by_id[row[0]]
            figures = {k: v for k, v in msgspec.structs.asdict(event).items() if k not in ("metadata", "timestamp")}
            lines.append(f"{sign} {event.timestamp:%H:%M:%S.%f} {row[1]} {figures}")
    return "\n".join(lines)
