"""Shared fixtures of the model tests: real ticks (the shipped sample: EURUSD and NZDUSD,
5-7 May 2014), real libraries, small model parameters so the suite stays fast.

The dataset is built once per session and handed to ``train(..., dataset=...)``; every
training writes to its own temporary registry.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tradepipe.models.training import SMALL_PARAMS, TrainRequest, load_dataset, train
from tradepipe.sources import sample_paths

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
FOLDS = 3


def small_request(tmp: Path, **overrides) -> TrainRequest:
    fields = dict(paths=tuple(sample_paths()), registry=tmp / "registry", report=None, seed=7, n_folds=FOLDS,
                  params=SMALL_PARAMS)
    fields.update(overrides)
    return TrainRequest(**fields)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """The labelled rows of both shipped sample files (~8k 1m rows)."""
    return load_dataset(small_request(tmp_path_factory.mktemp("unused")))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, sample_dataset):
    """All three kinds trained once on the sample, with the report written."""
    tmp = tmp_path_factory.mktemp("trained")
    return train(small_request(tmp, report=tmp / "reports"), dataset=sample_dataset)


def head_of(path: Path, rows: int, target: Path) -> Path:
    """The header and first ``rows`` data rows of a (gzip) CSV as a plain CSV at ``target``."""
    with gzip.open(path, "rt", newline="") as f:
        lines = [next(f) for _ in range(rows + 1)]
    target.write_text("".join(lines))
    return target
