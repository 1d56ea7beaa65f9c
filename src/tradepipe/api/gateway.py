"""Commands as events, gateway side (R8.2): publish a request, follow its response.

:meth:`CommandGateway.submit` publishes an APIRequestReceived whose eventId, correlationId and
requestId are one fresh UUIDv7, and tracks the request. A :class:`~tradepipe.runtime.tail.BusTail`
following ``api-responses`` hands every APIResponseReady to the gateway, which records it
with its request and wakes whoever waits (:meth:`CommandGateway.wait`, from asyncio: the
tail's thread hands the response over with ``call_soon_threadsafe``). The request is tracked
before it is published, so a response cannot arrive unnoticed.

Memory is bounded: the latest ``keep`` requests are tracked; an older one is forgotten (its
status is then unknown, and a client still waiting on it times out).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tradepipe.bus.base import Record
from tradepipe.events.envelope import Event, Metadata, new_event_id
from tradepipe.events.types import APIRequestReceived, APIResponseReady
from tradepipe.runtime.store import EventStore
from tradepipe.runtime.tail import BusTail

PRODUCER = "api-gateway"


@dataclass
class TrackedRequest:
    request: APIRequestReceived
    response: APIResponseReady | None = None
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        """The request as ``GET /api/v1/requests/{id}`` shows it."""
        request, response = self.request, self.response
        return {
            "requestId": request.request_id,
            "method": request.method,
            "path": request.path,
            "submittedAt": request.timestamp.isoformat(),
            "status": "pending" if response is None else "done",
            "response": None if response is None else {"status": response.status, "body": response.body},
        }


class CommandGateway:
    def __init__(self, events: EventStore, tail: BusTail, *, keep: int = 10_000) -> None:
        self.events = events
        self.keep = keep
        self._requests: OrderedDict[str, TrackedRequest] = OrderedDict()
        self._lock = threading.Lock()  # the tail's thread and the request threads
        self._publish_lock = threading.Lock()  # one producer, requests on several threads
        tail.subscribe(self._on_event)

    def submit(self, method: str, path: str, body: Any, *, sync: bool,
               loop: asyncio.AbstractEventLoop | None = None) -> tuple[TrackedRequest, asyncio.Future | None]:
        """Publish a request (blocking: call it from a worker thread). With ``loop``, also
        return a future of ``loop`` that the response will complete."""
        request_id = new_event_id()
        request = APIRequestReceived(
            event_id=request_id, timestamp=datetime.now(timezone.utc), correlation_id=request_id,
            metadata=Metadata(version=APIRequestReceived.schema_version, producer=PRODUCER),
            request_id=str(request_id), method=method, path=path, body=body, sync=sync)
        tracked = TrackedRequest(request)
        future = None
        with self._lock:
            if loop is not None:
                future = loop.create_future()
                tracked.waiters.append((loop, future))
            self._requests[request.request_id] = tracked
            while len(self._requests) > self.keep:
                self._requests.popitem(last=False)
        with self._publish_lock:
            self.events.append([request])
        return tracked, future

    async def wait(self, future: asyncio.Future, timeout_s: float) -> APIResponseReady | None:
        """The response the future was given, or None after ``timeout_s``."""
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None

    def tracked(self, request_id: str) -> TrackedRequest | None:
        with self._lock:
            return self._requests.get(request_id)

    def _on_event(self, event: Event, record: Record) -> None:
        if type(event) is not APIResponseReady:
            return
        with self._lock:
            tracked = self._requests.get(event.request_id)
            if tracked is None or tracked.response is not None:  # another gateway's, or a re-delivery
                return
            tracked.response = event
            waiters, tracked.waiters = tracked.waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_complete, future, event)


def _complete(future: asyncio.Future, response: APIResponseReady) -> None:
    if not future.done():  # a waiter that timed out cancelled it
        future.set_result(response)
