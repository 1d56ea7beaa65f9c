"""Runs a live projector until it has applied everything on the bus and published its
DatabaseUpdated events: the process the SIGKILL test kills.

usage: python projection_worker.py BUS_URL STORE_URL BATCH_SIZE
"""

import sys

from tradepipe.bus import open_bus
from tradepipe.read.projections import ProjectionRunner, open_read_store

if __name__ == "__main__":
    bus_url, store_url, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open_bus(bus_url, create=False) as bus:
        store = open_read_store(store_url)
        with ProjectionRunner(bus, store, batch_size=batch_size) as runner:
            while not runner.caught_up() or store.pending_updates():
                runner.step(timeout_s=0.05)
        store.close()
