"""Telegram (R8.6): the notifier's messages to the configured chats, and the operator's
commands from those chats, over the Bot API (plain HTTPS: getMe, getUpdates, sendMessage).

- :class:`BotApi` calls the methods, retrying network errors and 5xx with exponential
  backoff and a 429 after its ``retry_after``. The token is never logged: httpx logs the URL
  of every request at INFO and puts it in its exceptions, so the client builds its requests
  with ``/bot***/`` in the path and a transport swaps the token in on the way out; log
  lines, reprs and error messages only ever see ``***``.
- :class:`TelegramSink` is the notifier's :class:`~tradepipe.services.notifier.NotificationSink`:
  each message (fills, closed positions, alerts, halts: the notifier formats them) goes to
  every configured chat.
- :class:`TelegramCommands` answers /status /positions /pnl /performance /halt /resume /help,
  only in the configured chats (a message from any other chat is ignored and logged: the log
  line names the chat id to add). Answers come from the read side
  (:class:`~tradepipe.read.model.ReadModel`); /halt and /resume publish a TradingCommand on
  the bus, whose eventId is derived from the Telegram message, so a redelivered update is a
  duplicate the engine drops.
- :class:`TelegramBot` is what ``tradepipe service notifier`` adds when ``telegram.token`` is
  set: the sink, and the command loop in its own thread.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from tradepipe.bus.base import Bus
from tradepipe.config import Settings, TelegramSettings
from tradepipe.events.codec import Codec, get_codec
from tradepipe.events.types import TradingCommand
from tradepipe.read.model import PositionView, ReadModel
from tradepipe.read.projections import ReadStore, open_read_store
from tradepipe.runtime.clock import WallClock
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import publish
from tradepipe.services.notifier import price_text, volume_text

log = logging.getLogger("tradepipe.telegram")

REQUEST_TIMEOUT_S = 10.0  # connect, write and a sendMessage's answer; a long poll adds its own timeout
MAX_BACKOFF_S = 30.0
ERROR_PAUSE_S = 5.0  # the command loop's pause after a failed poll (the client has retried already)
MESSAGE_LIMIT = 4096  # characters of one Telegram message
POSITIONS_LISTED = 30  # /positions lists at most this many, then says how many more
#: /performance lists these first, then the others (per-model hit rates) by name
HEADLINE_METRICS = ("sharpe", "sortino", "max_drawdown", "win_rate", "profit_factor", "exposure")
SHARE_METRICS = ("max_drawdown", "win_rate", "exposure", "hit_rate")  # shown as percentages (by prefix)
SEVERITY_MARKS = {"warning": "\u26a0\ufe0f ", "critical": "\U0001f6a8 "}  # warning sign, rotating light

_MASKED = b"/bot***/"
COMMANDS = {
    "/status": "trading state, equity and positions",
    "/positions": "open positions",
    "/pnl": "realized and unrealized PnL",
    "/performance": "the latest performance figures",
    "/halt": "[reason] stop opening positions",
    "/resume": "[reason] resume trading (also after the kill switch)",
    "/help": "this list",
}
HELP = "tradepipe commands:\n" + "\n".join(f"{name} {what}" for name, what in COMMANDS.items())


class BotApiError(Exception):
    """A Bot API call that failed for good. ``code``: Telegram's error_code (the HTTP status),
    None for a network failure. The message never holds the token."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class _TokenTransport(httpx.BaseTransport):
    """Puts the token into the path on the way out. httpx logs ("HTTP Request: POST
    .../bot***/getUpdates") and attaches to its exceptions the request it was handed, which
    keeps the mask; only the copy sent on the wire has the token."""

    def __init__(self, token: SecretStr, inner: httpx.BaseTransport) -> None:
        self._token = token
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        segment = b"/bot" + quote(self._token.get_secret_value(), safe=":").encode() + b"/"
        url = request.url.copy_with(raw_path=request.url.raw_path.replace(_MASKED, segment, 1))
        return self._inner.handle_request(httpx.Request(request.method, url, headers=request.headers,
                                                        stream=request.stream, extensions=request.extensions))

    def close(self) -> None:
        self._inner.close()


class BotApi:
    """The Bot API methods tradepipe uses. Waits between retries end early when ``stop`` is
    set (the call then raises :class:`BotApiError`)."""

    def __init__(self, base_url: str, token: str | SecretStr, *, poll_timeout_s: int = 20, retries: int = 4,
                 backoff_s: float = 0.5, stop: threading.Event | None = None) -> None:
        secret = token if isinstance(token, SecretStr) else SecretStr(token)
        if not secret.get_secret_value():
            raise ValueError("telegram.token is empty")
        self.base_url = base_url.rstrip("/")
        self.poll_timeout_s = poll_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.stop = stop or threading.Event()
        self._client = httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S,
                                    transport=_TokenTransport(secret, httpx.HTTPTransport()))

    def __repr__(self) -> str:
        return f"BotApi({self.base_url!r})"

    def get_me(self) -> dict[str, Any]:
        return self.call("getMe")

    def get_updates(self, offset: int | None = None, timeout_s: int | None = None) -> list[dict[str, Any]]:
        """The updates from ``offset`` on (which confirms, and drops, the earlier ones), waiting
        up to ``timeout_s`` (default: the poll timeout) for one to arrive."""
        wait = self.poll_timeout_s if timeout_s is None else timeout_s
        params: dict[str, Any] = {"timeout": wait, "allowed_updates": ["message"]}
        if offset is not None:
            params["offset"] = offset
        return self.call("getUpdates", params, read_timeout_s=wait + REQUEST_TIMEOUT_S)

    def send_message(self, chat_id: int, text: str, parse_mode: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"chat_id": chat_id, "text": text}
        if parse_mode is not None:
            params["parse_mode"] = parse_mode
        return self.call("sendMessage", params)

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             read_timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
        """``method``'s result. Retries network errors, 5xx and 429 up to ``retries`` times;
        any other refusal (401 wrong token, 400 bad request) raises at once."""
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=read_timeout_s)
        attempt = 0
        while True:
            code: int | None = None
            try:
                response = self._client.post(f"{_MASKED.decode()}{method}", json=params or {}, timeout=timeout)
            except httpx.TransportError as exc:
                problem, wait = f"{type(exc).__name__}: {exc}", self._backoff(attempt)
            else:
                body = _json_object(response)
                if body.get("ok") is True:
                    return body.get("result")
                code = body.get("error_code", response.status_code)
                problem = f"{code} {body.get('description') or response.reason_phrase}"
                if code == 429:
                    wait = float((body.get("parameters") or {}).get("retry_after") or self._backoff(attempt))
                elif response.status_code >= 500:
                    wait = self._backoff(attempt)
                else:
                    raise BotApiError(f"Bot API {method}: {problem}", code)
            if attempt >= self.retries:
                raise BotApiError(f"Bot API {method}: {problem} ({attempt + 1} attempts)", code)
            log.warning("Bot API %s: %s; retry in %.1f s", method, problem, wait)
            if self.stop.wait(wait):
                raise BotApiError(f"Bot API {method}: {problem} (stopped before retrying)", code)
            attempt += 1

    def close(self) -> None:
        self._client.close()

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object; empty for a body that is not one (a proxy's HTML page)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class TelegramSink:
    """The notifier's messages to every configured chat; warnings and critical ones marked.
    A chat that cannot be reached does not keep the message from the others; the send then
    raises naming the chats missed (the notifier counts and logs it)."""

    def __init__(self, api: BotApi, chat_ids: Sequence[int]) -> None:
        self.api = api
        self.chat_ids = tuple(chat_ids)

    def send(self, message: str, severity: str) -> None:
        text = SEVERITY_MARKS.get(severity, "") + message
        missed = []
        for chat_id in self.chat_ids:
            try:
                self.api.send_message(chat_id, text)
            except BotApiError as exc:
                missed.append(f"chat {chat_id}: {exc}")
        if missed:
            raise BotApiError(f"not delivered to {len(missed)} of {len(self.chat_ids)} chats: {'; '.join(missed)}")


def _time(moment: datetime | None) -> str:
    return "never" if moment is None else f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def _money(amount: float) -> str:
    return f"{amount:,.2f}"


def _signed(amount: float) -> str:
    return f"{amount:+,.2f}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _metric(name: str, value: float | None) -> str:
    if value is None:
        return f"{name} n/a"
    return f"{name} {value:.2%}" if name.startswith(SHARE_METRICS) else f"{name} {value:.4g}"


def _position_line(position: PositionView) -> str:
    unrealized = "" if position.unrealized_pnl is None else f", unrealized {_signed(position.unrealized_pnl)}"
    return (f"{position.symbol} {position.side} {volume_text(position.volume)} @ {price_text(position.entry_price)} "
            f"since {_time(position.opened_at)}{unrealized} (position {position.position_id})")


class TelegramCommands:
    """The command loop: long-polls getUpdates, answers the configured chats' commands from
    ``read``, publishes /halt and /resume as TradingCommand on ``bus``."""

    def __init__(self, api: BotApi, chat_ids: Sequence[int], read: ReadModel, bus: Bus, codec: Codec) -> None:
        self.api = api
        self.chat_ids = frozenset(chat_ids)
        self.read = read
        self.codec = codec
        self.producer = bus.producer()
        self.offset: int | None = None  # the next update wanted; asking for it confirms the earlier ones
        self.answers = {"/status": self.status, "/positions": self.positions, "/pnl": self.pnl,
                        "/performance": self.performance, "/help": lambda: HELP}

    def run(self, stop: threading.Event) -> None:
        """Poll and answer until ``stop`` is set (noticed after the current long poll) or the
        Bot API refuses the token."""
        while not stop.is_set():
            try:
                self.step()
            except BotApiError as exc:
                if stop.is_set():
                    break
                if exc.code == 401:
                    log.error("Telegram commands stop: %s (check telegram.token)", exc)
                    break
                log.warning("Telegram commands: %s; polling again in %.0f s", exc, ERROR_PAUSE_S)
                stop.wait(ERROR_PAUSE_S)
            except Exception:  # a bug must not end the loop silently, nor spin
                log.exception("Telegram commands: an update failed; polling again in %.0f s", ERROR_PAUSE_S)
                stop.wait(ERROR_PAUSE_S)

    def step(self, timeout_s: int | None = None) -> int:
        """One getUpdates (waiting up to ``timeout_s``) and the answers to it; the number of
        updates seen."""
        updates = self.api.get_updates(self.offset, timeout_s)
        for update in updates:
            self.offset = update["update_id"] + 1
            message = update.get("message")
            if message is None or "text" not in message:
                continue
            reply = self.answer(message)
            if reply is not None:
                self.api.send_message(message["chat"]["id"], reply[:MESSAGE_LIMIT])
        return len(updates)

    def answer(self, message: dict[str, Any]) -> str | None:
        """The reply to a text message; None (and a log line) for a chat not configured."""
        chat_id = message["chat"]["id"]
        text = message["text"].strip()
        word, _, rest = text.partition(" ")
        if chat_id not in self.chat_ids:
            sender = message.get("from") or {}
            log.warning("Telegram: ignored %r from chat %s (%s), not in telegram.chat_ids", word, chat_id,
                        sender.get("username") or sender.get("first_name") or "unknown sender")
            return None
        command = word.split("@", 1)[0].lower()  # "/status@tradepipe_bot" in a group
        if command in ("/halt", "/resume"):
            answer = functools.partial(self.trading_command, command[1:], rest.strip(), message)
        elif command in self.answers:
            answer = self.answers[command]
        elif word.startswith("/"):
            return f"Unknown command {word}. /help lists the commands."
        else:
            return "Commands start with /; /help lists them."
        try:
            return answer()
        except Exception as exc:  # the read store or the bus may be down: say so, and keep answering
            log.exception("Telegram: %s failed", command)
            return f"{command} failed: {type(exc).__name__}: {exc}"

    def status(self) -> str:
        portfolio = self.read.portfolio()
        state = f"Trading {portfolio.trading_state}"
        if portfolio.trading_state_reason:
            state += f": {portfolio.trading_state_reason}"
        return (f"{state}\nEquity {_money(portfolio.equity)} (realized {_signed(portfolio.realized_pnl)}, "
                f"unrealized {_signed(portfolio.unrealized_pnl)})\n"
                f"Positions: {portfolio.open_positions} open, {portfolio.closed_positions} closed; "
                f"{_count(portfolio.trades, 'fill')}, last {_time(portfolio.last_trade_at)}")

    def positions(self) -> str:
        open_positions = self.read.positions(open_only=True)
        if not open_positions:
            return "No open positions."
        lines = [f"{_count(len(open_positions), 'open position')}:"]
        lines += [_position_line(p) for p in open_positions[:POSITIONS_LISTED]]
        if len(open_positions) > POSITIONS_LISTED:
            lines.append(f"... and {len(open_positions) - POSITIONS_LISTED} more")
        return "\n".join(lines)

    def pnl(self) -> str:
        portfolio = self.read.portfolio()
        change = portfolio.equity / portfolio.initial_equity - 1.0 if portfolio.initial_equity else 0.0
        return (f"Realized PnL {_signed(portfolio.realized_pnl)} over "
                f"{_count(portfolio.closed_positions, 'closed position')}\n"
                f"Unrealized PnL {_signed(portfolio.unrealized_pnl)} on "
                f"{_count(portfolio.open_positions, 'open position')}\n"
                f"Equity {_money(portfolio.equity)} from {_money(portfolio.initial_equity)} ({change:+.2%})")

    def performance(self) -> str:
        performance = self.read.performance()
        if performance is None:
            return "No performance figures yet."
        metrics = performance.metrics
        names = [n for n in HEADLINE_METRICS if n in metrics] + sorted(n for n in metrics if n not in HEADLINE_METRICS)
        figures = ", ".join(_metric(name, metrics[name]) for name in names)
        return (f"Performance at {_time(performance.time)}\n"
                f"Equity {_money(performance.equity)}, realized {_signed(performance.realized_pnl)}, "
                f"unrealized {_signed(performance.unrealized_pnl)}, {_count(performance.trades, 'trade')}"
                + (f"\n{figures}" if figures else ""))

    def trading_command(self, command: str, reason: str, message: dict[str, Any]) -> str:
        """Publish a halt or resume. Its eventId derives from the chat and message ids and its
        time is the message's, so handling a redelivered update publishes the same event."""
        chat_id = message["chat"]["id"]
        sender = (message.get("from") or {}).get("username")
        via = f"telegram chat {chat_id}" + (f" @{sender}" if sender else "")
        ctx = Context("telegram", WallClock())
        ctx.begin(None, key=f"telegram:{chat_id}:{message['message_id']}".encode())
        event = ctx.emit(TradingCommand, command=command, reason=f"{reason} ({via})" if reason else via,
                         timestamp=datetime.fromtimestamp(message["date"], timezone.utc))
        publish(self.producer, self.codec, [event])
        self.producer.flush()
        log.info("Telegram: %s from %s published (event %s)", command, via, event.event_id)
        return (f"{command.capitalize()} sent (event {event.event_id}); the engine confirms with a "
                f"'Trading {'HALTED' if command == 'halt' else 'ACTIVE'}' message.")

    def close(self) -> None:
        self.producer.close()


class TelegramBot:
    """The notifier process's Telegram side: :attr:`sink` for its messages, and the command
    loop in a thread (:meth:`start`, :meth:`stop`). Stopping waits for the current long poll
    (at most ``poll_timeout_s``): nothing is lost by it, unconfirmed updates stay with Telegram."""

    def __init__(self, settings: TelegramSettings, *, read: ReadModel, bus: Bus, codec: Codec) -> None:
        self.owned_store: ReadStore | None = None  # a store :meth:`from_settings` opened, closed by stop()
        self.stopping = threading.Event()
        self.api = BotApi(settings.base_url, settings.token, poll_timeout_s=settings.poll_timeout_s,
                          stop=self.stopping)
        self.sink = TelegramSink(self.api, settings.chat_ids)
        self.commands = TelegramCommands(self.api, settings.chat_ids, read, bus, codec)
        self._thread = threading.Thread(target=self.commands.run, args=(self.stopping,), name="telegram-commands",
                                        daemon=True)

    @classmethod
    def from_settings(cls, settings: Settings, bus: Bus) -> TelegramBot:
        """The bot of ``settings.telegram``, answering from the read store ``settings.read.store``
        (StoreURLError / StoreUnavailableError when it cannot be opened)."""
        store = open_read_store(settings.read.store, initial_equity=settings.trading.initial_equity)
        bot = cls(settings.telegram, read=store, bus=bus, codec=get_codec(settings.bus.codec))
        bot.owned_store = store
        return bot

    def start(self) -> dict[str, Any]:
        """Check the token (getMe: a wrong one raises :class:`BotApiError` with code 401),
        start the command loop; the bot's own description."""
        me = self.api.get_me()
        if not self.sink.chat_ids:
            log.warning("telegram.chat_ids is empty: no chat gets notifications or answers; a message to the "
                        "bot logs its chat id")
        self._thread.start()
        return me

    def stop(self) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self.commands.close()
        self.api.close()
        if self.owned_store is not None:
            self.owned_store.close()


__all__ = ["BotApi", "BotApiError", "COMMANDS", "TelegramBot", "TelegramCommands", "TelegramSink"]
