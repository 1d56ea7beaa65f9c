"""Market data sources (R4.1): recorded files, and the real data sample shipped with the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_paths() -> list[Path]:
    """The shipped tick sample files (R9.3), sorted by name.

    Found through importlib.resources, so they resolve both in a source checkout and after
    a regular (non-editable) install, where the package lives in a directory on disk.
    """
    sample_dir = resources.files("tradepipe") / "sample"
    return sorted(Path(str(entry)) for entry in sample_dir.iterdir() if entry.name.endswith(".csv.gz"))


__all__ = ["sample_paths"]
