"""Runs TickStats on a bus until it has read everything: the process the crash test kills.

usage: python crash_worker.py BUS_URL SPIN_US
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tick_stats import TickStats  # noqa: E402

from tradepipe.bus import open_bus  # noqa: E402
from tradepipe.runtime.runner import RunnerConfig, ServiceRunner  # noqa: E402

if __name__ == "__main__":
    url, spin_us = sys.argv[1], int(sys.argv[2])
    with open_bus(url) as bus:
        runner = ServiceRunner(
            TickStats(spin_us=spin_us), bus, instance_id="tick-stats-0",
            config=RunnerConfig(batch_size=100, checkpoint_every=500),
        )
        runner.run(until_idle=True)
        runner.close()
