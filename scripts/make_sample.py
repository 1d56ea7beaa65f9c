"""Write the small real data sample shipped in the package (R9.3).

Copies 3 trading days (2014-05-05 00:00 UTC up to 2014-05-08 00:00 UTC) of real OANDA ticks
for EURUSD and NZDUSD from the developer data set (../shared/data beside the repository) into
src/tradepipe/sample/, rows byte for byte, and prints the row counts and sha256 that
src/tradepipe/sample/PROVENANCE.md records. The gzip header carries no name and no time, so
running it again writes identical files.

    python scripts/make_sample.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "src" / "tradepipe" / "sample"
SYMBOLS = ("eurusd", "nzdusd")
START, END = "2014-05-05T00:00:00", "2014-05-08T00:00:00"  # [START, END), UTC
SAMPLE_NAME = "{symbol}_ticks_2014-05-05_07.csv.gz"


def copy_slice(source: Path, target: Path) -> int:
    """Copy the header and the rows with START <= ts_utc < END; returns the row count.

    ISO-8601 UTC timestamps of one layout sort as strings, so the slice needs no parsing.
    """
    rows = 0
    with gzip.open(source, "rb") as lines, open(target, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
        out.write(next(lines))
        start, end = START.encode(), END.encode()
        for line in lines:
            if line >= end:
                break
            if line >= start:
                out.write(line)
                rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    SAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    for symbol in SYMBOLS:
        source = args.data_dir / f"{symbol}_ticks_2014-05.csv.gz"
        target = SAMPLE_DIR / SAMPLE_NAME.format(symbol=symbol)
        rows = copy_slice(source, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        print(f"{target.name}: {rows} rows, {target.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
