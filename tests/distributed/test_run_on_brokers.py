"""`tradepipe run` / `backtest` with --bus kafka://… or redis://… (all services in one
process, every event written through the broker) give the summary of the SQLite run on the
same data, and the broker holds the same events per topic."""

from __future__ import annotations

import json

import pytest
from infra import Tansu
from typer.testing import CliRunner

from tradepipe.bus import open_bus
from tradepipe.cli import app
from tradepipe.events.types import ALL_TOPICS
from tradepipe.sources import sample_paths

WINDOW = ("2014-05-05T00:00:00", "2014-05-05T01:30:00")
#: what may differ: where things were written, and wall-time figures
PER_RUN = {"bus", "report", "audit_log", "notifications", "wall_s", "ticks_per_s", "latency_samples",
           "latency_p50_ms", "latency_p99_ms"}


@pytest.fixture
def fresh_kafka():
    """A broker of its own: the pipeline's topic names are fixed, and a run refuses topics
    that already hold market data."""
    broker = Tansu().start()
    yield f"{broker.url}?session_timeout_ms=2000&heartbeat_interval_ms=500"
    broker.stop()


def backtest(tmp_path, bus_url: str, registry) -> dict:
    out = tmp_path / bus_url.split(":", 1)[0]
    out.mkdir()
    args = ["backtest", "--bus", bus_url, "--registry", str(registry), "--allow-in-sample",
            "--from", WINDOW[0], "--to", WINDOW[1], "--report", str(out / "report"), "--audit", str(out / "audit.db"),
            "--summary-json", str(out / "summary.json")]
    for path in sample_paths():
        args += ["--data", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def topic_counts(bus_url: str) -> dict[str, int]:
    with open_bus(bus_url) as bus:
        return {topic: sum(bus.end_offsets(topic).values()) for topic in ALL_TOPICS}


@pytest.mark.parametrize("backend", ["kafka", "redis"])
def test_backtest_through_a_broker_gives_the_sqlite_summary(backend, registry, tmp_path, request):
    url = request.getfixturevalue("fresh_kafka" if backend == "kafka" else "redis_url")
    reference_url = f"sqlite:///{tmp_path / 'reference.db'}"
    reference = backtest(tmp_path, reference_url, registry)
    summary = backtest(tmp_path, url, registry)
    assert reference["orders"] > 10
    assert {k: v for k, v in summary.items() if k not in PER_RUN} == {k: v for k, v in reference.items() if k not in PER_RUN}
    assert topic_counts(url) == topic_counts(reference_url)
