"""`tradepipe api` as a process on a SQLite bus holding real trading: it serves /health,
/openapi.json, the aggregated /metrics and the projections it builds itself, answers a sync
command with its own command handler, rebuilds the read side on a replay, and stops cleanly
on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gateway_kit import AUTH, KEY, WINDOW, sqlite_bus
from infra import free_port, wait_until

from tradepipe.api.auth import hash_key
from tradepipe.config import Settings
from tradepipe.pipeline import RunRequest, run_pipeline
from tradepipe.sources import sample_paths

pytestmark = pytest.mark.slow


@pytest.fixture
def api_process(tmp_path):
    bus = sqlite_bus(tmp_path)
    run_pipeline(RunRequest(paths=sample_paths(), settings=Settings(), strategy="ema-cross", start=WINDOW[0],
                            end=WINDOW[1]), bus)
    bus.close()
    config = tmp_path / "tradepipe.toml"
    config.write_text(f'[api.keys]\nops = "{hash_key(KEY)}"\n[audit]\npath = "{tmp_path / "audit.db"}"\n')
    port = free_port()
    log = (tmp_path / "api.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tradepipe", "api", "--config", str(config), "--bus", f"sqlite:///{tmp_path / 'bus.db'}",
         "--store", f"sqlite:///{tmp_path / 'read.db'}", "--analytics", f"chdb:///{tmp_path / 'analytics'}",
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"}, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        yield process, base, tmp_path / "api.log"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        log.close()


def get(url: str, **kwargs) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kwargs)
    except httpx.TransportError:
        return None


def test_tradepipe_api_serves_the_read_side_commands_and_metrics(api_process):
    process, base, log = api_process
    health = wait_until(lambda: (r := get(f"{base}/health")) is not None and r.status_code == 200 and r, 60)
    body = health.json()
    assert body["status"] == "ok" and body["analytics"] is True and body["commandHandler"] == "running"
    assert body["readSide"] == {"projections": "running", "analytics": "running"}
    assert "/api/v1/orders" in get(f"{base}/openapi.json").json()["paths"]
    # the projections and analytics catch up with the bus by themselves
    orders = wait_until(lambda: len(get(f"{base}/api/v1/orders").json()) == 24, 60)
    assert orders
    assert wait_until(lambda: get(f"{base}/api/v1/analytics/pnl-by-day").json(), 60)[0]["positionsClosed"] == 11
    # a sync command, answered by the process's own command handler
    started = time.perf_counter()
    halted = httpx.post(f"{base}/api/v1/trading/halt?sync=true", json={"reason": "smoke"}, headers=AUTH, timeout=10)
    round_trip_ms = (time.perf_counter() - started) * 1000
    assert halted.status_code == 200 and halted.json()["command"] == "halt"
    print(f"sync command round trip over HTTP + SQLite bus: {round_trip_ms:.1f} ms")
    # the aggregated metrics: events seen by the tail, consumer lag of the command handler
    metrics = wait_until(lambda: (text := get(f"{base}/metrics").text) and 'tradepipe_events_total{' in text and text)
    assert 'topic="api-requests"' in metrics and 'tradepipe_consumer_lag{partition="0",service="api-commands"' in metrics
    # a replay rebuilds the read side from the bus: the same orders again
    replay = httpx.post(f"{base}/api/v1/replay?sync=true", json={"target": "projections"}, headers=AUTH, timeout=10)
    assert replay.status_code == 200
    wait_until(lambda: get(f"{base}/health").json()["rebuilds"] == 1, 60)
    assert len(get(f"{base}/api/v1/orders").json()) == 24
    assert get(f"{base}/dashboard").status_code == 200
    # the dashboard opens on the history already on the bus (api.dashboard_history back)
    fills = [t["orderId"] for t in get(f"{base}/api/v1/trades?limit=1000").json()]
    shown = wait_until(lambda: len(f := dashboard_fills(base)) == len(fills) and f, 30)
    assert sorted(f["orderId"] for f in shown) == sorted(fills)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, Path(log).read_text()
    assert KEY not in Path(log).read_text()  # keys are never logged


def test_tradepipe_dashboard_serves_the_page_of_the_api_process(tmp_path):
    """`tradepipe dashboard`: the API process by another name, telling where the page is."""
    sqlite_bus(tmp_path).close()
    config = tmp_path / "tradepipe.toml"
    config.write_text(f'[read]\nstore = "sqlite:///{tmp_path / "read.db"}"\nanalytics = "none"\n')
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tradepipe", "dashboard", "--config", str(config), "--bus",
         f"sqlite:///{tmp_path / 'bus.db'}", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"}, cwd=tmp_path)
    try:
        page = wait_until(lambda: (r := get(f"http://127.0.0.1:{port}/dashboard")) is not None and r, 60)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"dashboard: http://127.0.0.1:{port}/dashboard" in output


def dashboard_fills(base: str) -> list[dict]:
    """The fills in the dashboard stream's first message (its snapshot)."""
    with httpx.stream("GET", f"{base}/dashboard/stream", timeout=10) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                return json.loads(line[5:])["fills"]
    return []
