"""A local stand-in for Telegram's Bot API server: the methods tradepipe calls (getMe,
getUpdates, sendMessage) at ``/bot<token>/<method>``, with the real API's JSON shapes
(``{"ok": true, "result": ...}``, ``{"ok": false, "error_code": ..., "description": ...}``).

- getUpdates: the pending updates from ``offset`` on; an offset confirms (forgets) every
  update before it; with none pending it waits up to ``timeout`` seconds for one.
- a wrong token: 401 Unauthorized, and sendMessage to a chat that never wrote to the bot:
  400 "chat not found", as Telegram answers;
- :meth:`BotApiStandIn.throttle` makes the next call of a method answer 429 with
  ``parameters.retry_after``; the times of that refusal and of the next call are kept.

Tests post the users' side with :meth:`BotApiStandIn.say` and read what the bot sent with
:meth:`BotApiStandIn.wait_sent`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

BOT = {"id": 7000001, "is_bot": True, "first_name": "tradepipe", "username": "tradepipe_test_bot"}


class BotApiStandIn:
    def __init__(self, token: str) -> None:
        self.token = token
        self.chats: set[int] = set()  # chats the bot can write to (a user wrote to it first)
        self.updates: list[dict[str, Any]] = []  # pending (not yet confirmed by an offset)
        self.sent: list[dict[str, Any]] = []  # sendMessage results, in order
        self.offsets: list[int | None] = []  # the offset of every getUpdates
        self.throttled: dict[str, int] = {}  # method -> retry_after of its next call
        self.throttled_at: dict[str, float] = {}  # method -> monotonic time of the 429
        self.retried_at: dict[str, float] = {}  # method -> monotonic time of the first call after it
        self.requests: list[str] = []  # method of every request, a wrong token's included
        self._closed = False
        self._next_update_id = 500_000
        self._next_message_id = 1
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="botapi-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> BotApiStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._closed = True  # ends the long polls waiting
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # -- the users' side ------------------------------------------------------------------
    def say(self, chat_id: int, text: str, *, username: str = "ann") -> int:
        """A user's text message in a private chat, as an update; its update_id."""
        with self._changed:
            self.chats.add(chat_id)
            update_id = self._next_update_id
            self._next_update_id += 1
            message = {"message_id": self._take_message_id(), "date": int(time.time()),
                       "from": {"id": chat_id, "is_bot": False, "first_name": username.title(), "username": username},
                       "chat": {"id": chat_id, "type": "private"}, "text": text}
            if text.startswith("/"):
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
            self.updates.append({"update_id": update_id, "message": message})
            self._changed.notify_all()
            return update_id

    def throttle(self, method: str, retry_after: int) -> None:
        with self._changed:
            self.throttled[method] = retry_after

    def wait_sent(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The messages sent once there are ``count`` of them (AssertionError after ``timeout_s``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.sent) >= count, timeout_s):
                raise AssertionError(f"{len(self.sent)} messages sent, {count} expected: {self.sent}")
            return list(self.sent)

    def wait_polls(self, count: int, timeout_s: float = 10.0) -> None:
        """Until getUpdates has been called ``count`` times."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.offsets) >= count, timeout_s):
                raise AssertionError(f"{len(self.offsets)} polls, {count} expected")

    # -- the methods ----------------------------------------------------------------------
    def _call(self, token: str, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._changed:
            self.requests.append(method)
            if token != self.token:
                return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
            if method in self.throttled_at and method not in self.retried_at:
                self.retried_at[method] = time.monotonic()
            retry_after = self.throttled.pop(method, None)
            if retry_after is not None:
                self.throttled_at[method] = time.monotonic()
                return 429, {"ok": False, "error_code": 429, "description": f"Too Many Requests: retry after "
                             f"{retry_after}", "parameters": {"retry_after": retry_after}}
        if method == "getMe":
            return 200, {"ok": True, "result": BOT}
        if method == "getUpdates":
            return self._get_updates(params)
        if method == "sendMessage":
            return self._send_message(params)
        return 404, {"ok": False, "error_code": 404, "description": "Not Found"}

    def _get_updates(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        offset = int(params["offset"]) if params.get("offset") is not None else None
        timeout = float(params.get("timeout", 0))
        limit = int(params.get("limit", 100))
        with self._changed:
            self.offsets.append(offset)
            self._changed.notify_all()
            if offset is not None:  # confirms everything before it
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
            self._changed.wait_for(lambda: self.updates or self._closed, timeout)
            return 200, {"ok": True, "result": self.updates[:limit]}

    def _send_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not params.get("chat_id"):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat_id is empty"}
        if int(params["chat_id"]) not in self.chats:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
        if not params.get("text"):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        with self._changed:
            message = {"message_id": self._take_message_id(), "date": int(time.time()),
                       "from": BOT, "chat": {"id": int(params["chat_id"]), "type": "private"}, "text": params["text"]}
            if params.get("parse_mode"):
                message["parse_mode"] = params["parse_mode"]
            self.sent.append(message)
            self._changed.notify_all()
            return 200, {"ok": True, "result": message}

    def _take_message_id(self) -> int:
        self._next_message_id += 1
        return self._next_message_id - 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real server

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer({})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get_content_type() == "application/json" and raw:
                    params = json.loads(raw)
                else:
                    params = dict(parse_qsl(raw.decode()))
                self._answer(params)

            def _answer(self, params: dict[str, Any]) -> None:
                url = urlsplit(self.path)
                params = {**dict(parse_qsl(url.query)), **params}
                parts = url.path.strip("/").split("/")
                if len(parts) == 2 and parts[0].startswith("bot"):
                    status, body = standin._call(unquote(parts[0][3:]), parts[1], params)
                else:
                    status, body = 404, {"ok": False, "error_code": 404, "description": "Not Found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # the request line holds the token
                pass

        return Handler
