"""R3.2 / issue 2 item 7: a consumer process on the SQLite bus is killed with SIGKILL in the
middle of a stream and restarted; its final state equals an uninterrupted run's and no
event's effect is applied twice (outputs repeated after the crash carry the same ids and
bytes, so downstream deduplication removes them)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tick_stats import make_ticks

from tradepipe.bus import open_bus
from tradepipe.events import FEATURES
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.store import EventStore, SQLiteCheckpointStore


WORKER = Path(__file__).with_name("crash_worker.py")
TICKS = 12_000
SPIN_US = 150  # ~2 s of handling, so kills land mid-stream


def seed_bus(path: Path) -> str:
    url = f"sqlite:///{path}"
    with open_bus(url) as bus:
        ensure_topics(bus)
        store = EventStore(bus)
        ticks = make_ticks(TICKS)
        store.append(ticks[:8000])
        store.append(ticks[3000:3500])  # upstream re-delivery: must not count twice
        store.append(ticks[8000:])
        store.close()
    return url


def start_worker(url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), url, str(SPIN_US)], stderr=subprocess.PIPE)


def handled_so_far(path: Path) -> int:
    store = SQLiteCheckpointStore(path)
    try:
        checkpoint = store.load("tick-stats", "tick-stats", "tick-stats-0")
        return 0 if checkpoint is None else checkpoint.handled
    finally:
        store.close()


def kill_after(worker: subprocess.Popen, path: Path, handled_at_least: int, rng: random.Random) -> int:
    deadline = time.monotonic() + 60
    while handled_so_far(path) < handled_at_least:
        assert worker.poll() is None, f"worker ended before it could be killed: {worker.stderr.read().decode()}"
        assert time.monotonic() < deadline, "worker made no progress"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.04))  # land between two checkpoints, not on one
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    return worker.returncode


def final_state(path: Path):
    store = SQLiteCheckpointStore(path)
    try:
        return store.load("tick-stats", "tick-stats", "tick-stats-0")
    finally:
        store.close()


def outputs(url: str):
    with open_bus(url, create=False) as bus:
        return [(s.record.value, s.event) for s in EventStore(bus).replay(FEATURES)]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_mid_stream_then_restart_equals_an_uninterrupted_run(tmp_path, seed):
    rng = random.Random(seed)
    reference, crashed = tmp_path / "reference.db", tmp_path / "crashed.db"
    reference_url, crashed_url = seed_bus(reference), seed_bus(crashed)

    uninterrupted = start_worker(reference_url)
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stderr.read().decode()

    kills = []
    for handled_at_least in (2500, 7000):
        kills.append(kill_after(start_worker(crashed_url), crashed, handled_at_least, rng))
    last = start_worker(crashed_url)
    assert last.wait(timeout=120) == 0, last.stderr.read().decode()
    assert kills == [-signal.SIGKILL, -signal.SIGKILL]

    expected, got = final_state(reference), final_state(crashed)
    assert expected.state["count"] == {"EURUSD": TICKS // 2, "NZDUSD": TICKS // 2}
    assert got.state == expected.state  # counts, float sums and last ids: each tick applied once
    assert got.handled == expected.handled == TICKS
    assert got.positions == expected.positions

    reference_out, crashed_out = outputs(reference_url), outputs(crashed_url)
    assert len(reference_out) == TICKS // 100
    first_copy: dict = {}
    for raw, event in crashed_out:
        assert first_copy.setdefault(event.event_id, raw) == raw  # a repeat is byte-identical
    assert set(first_copy) == {event.event_id for _, event in reference_out}
