"""The shipped sample (R9.3) is exactly the documented slice of the real source files."""

from __future__ import annotations

import gzip
import hashlib
import re

from tradepipe.sources import sample_paths
from tradepipe.sources.files import detect_kind, read_ticks

from .conftest import DATA_DIR, REPO

PROVENANCE = REPO / "src" / "tradepipe" / "sample" / "PROVENANCE.md"
START, END = "2014-05-05T00:00:00", "2014-05-08T00:00:00"


def _documented() -> dict[str, tuple[int, str]]:
    """file name -> (rows, sha256) from the PROVENANCE.md table."""
    rows = re.findall(r"^\| `(\S+\.csv\.gz)` \|.*\| ([\d,]+) \| [\d,]+ \| `([0-9a-f]{64})` \|$",
                      PROVENANCE.read_text(), re.MULTILINE)
    return {name: (int(count.replace(",", "")), digest) for name, count, digest in rows}


def test_sample_files_are_found_and_documented():
    paths = sample_paths()
    assert [p.name for p in paths] == ["eurusd_ticks_2014-05-05_07.csv.gz", "nzdusd_ticks_2014-05-05_07.csv.gz"]
    documented = _documented()
    for path in paths:
        rows, digest = documented[path.name]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert sum(1 for _ in read_ticks(path)) == rows
        assert detect_kind(path) == "ticks"
    assert documented["eurusd_ticks_2014-05-05_07.csv.gz"][0] == 111_408
    assert documented["nzdusd_ticks_2014-05-05_07.csv.gz"][0] == 119_036


def test_sample_is_the_exact_slice_of_the_source():
    for path in sample_paths():
        source = DATA_DIR / path.name.replace("2014-05-05_07", "2014-05")
        with gzip.open(source, "rt", newline="") as f:
            header = next(f)
            expected = [header] + [line for line in f if START <= line[:19] < END]
        with gzip.open(path, "rt", newline="") as f:
            assert f.readlines() == expected
