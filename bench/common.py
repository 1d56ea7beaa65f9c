"""Helpers shared by the benchmark scripts (run them as ``python bench/NAME.py``)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def median_time(fn, repeat: int) -> float:
    """Median wall seconds of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_note() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def report(lines: list[str], write: Path | None) -> None:
    """Print a result section (its first line is the '## ' heading) and, with ``--write``,
    put it into that markdown file in place of the section of the same heading."""
    text = "\n".join(lines)
    print(text)
    if write:
        update_section(write, lines[0], text)


def update_section(path: Path, heading: str, text: str) -> None:
    """Replace the section starting at ``heading`` (up to the next '## ') or append it."""
    current = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = current.find(heading + "\n")
    if start < 0:
        current = current.rstrip("\n") + "\n\n" + text
    else:
        end = current.find("\n## ", start + len(heading))
        current = current[:start] + text + ("" if end < 0 else current[end + 1:])
    path.write_text(current)


def small_registry(directory: Path):
    """Small models (the ones `tradepipe run` trains on first use) trained on the shipped
    sample into ``directory``: enough to time the model stage, not to judge it."""
    from tradepipe.config import Settings
    from tradepipe.models.registry import ModelRegistry
    from tradepipe.models.training import SMALL_PARAMS, TrainRequest, train
    from tradepipe.sources import sample_paths

    models = Settings().models
    train(TrainRequest(paths=sample_paths(), timeframe=models.timeframe, horizon=models.horizon,
                       dead_band=models.dead_band_bps / 1e4, kinds=models.kinds, registry=directory,
                       report=None, seed=models.seed, params=SMALL_PARAMS))
    return ModelRegistry(directory)
