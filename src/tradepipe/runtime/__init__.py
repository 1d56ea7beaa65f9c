"""The runtime (R3): moves events between the bus and services; owns offsets, retries,
dead-lettering, deduplication, checkpoints and snapshots."""

from tradepipe.runtime.clock import Clock, EventClock, WallClock
from tradepipe.runtime.service import Context, Service

__all__ = ["Clock", "EventClock", "WallClock", "Context", "Service"]
