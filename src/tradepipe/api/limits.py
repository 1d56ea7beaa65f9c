"""Rate limit per client (R8.2): a token bucket each, ``api.rate_limit_per_minute`` tokens,
refilled continuously. A client is its API key's id when it presents a valid key, else its
address (so random keys cannot buy fresh buckets). Past the limit a request gets 429 with
``Retry-After``. Buckets of the least recently seen clients are dropped past ``clients``:
memory stays bounded, and a dropped client only starts again with a full bucket.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import HTTPException, Request

from tradepipe.api.auth import API_KEY_HEADER


class RateLimiter:
    def __init__(self, per_minute: int, *, clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.clients = clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def take(self, client: str) -> float:
        """Spend one token of ``client``: 0.0 when allowed, else the seconds until one is back."""
        now = self._clock()
        tokens, at = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.refill_per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.refill_per_s
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.clients:
            self._buckets.popitem(last=False)
        return wait


async def rate_limited(request: Request) -> None:
    """FastAPI dependency of every /api/v1 route. Async, so it runs on the event loop thread:
    the buckets need no lock."""
    state = request.app.state
    key = request.headers.get(API_KEY_HEADER)
    key_id = state.keys.identify(key) if key else None
    client = f"key:{key_id}" if key_id else f"addr:{request.client.host if request.client else 'unknown'}"
    wait = state.limiter.take(client)
    if wait > 0:
        raise HTTPException(429, f"rate limit of {state.limiter.capacity:g} requests per minute reached; "
                                 f"retry in {wait:.1f} s", headers={"Retry-After": str(math.ceil(wait))})
