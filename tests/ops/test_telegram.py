"""Telegram (R8.6) against a local Bot API stand-in: notifications reach every configured
chat, commands are answered from a read store built from a real pipeline run, /halt and
/resume publish TradingCommand on a real SQLite bus, other chats are ignored and logged, a
429 is waited out, and the token appears in no log line, repr or error."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from tradepipe.bus import open_bus
from tradepipe.config import Settings, TelegramSettings
from tradepipe.events import ORDERS, PERFORMANCE, SYSTEM
from tradepipe.events.codec import JsonCodec
from tradepipe.events.types import (
    AlertRaised, OrderExecuted, OrderPlaced, PositionClosed, TradingCommand, TradingStateChanged,
)
from tradepipe.ops.telegram import HELP, BotApi, BotApiError, TelegramBot, TelegramCommands, TelegramSink
from tradepipe.pipeline import RunRequest, broker_for, run_pipeline
from tradepipe.read.projections import open_read_store, rebuild
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import EventStore, publish
from tradepipe.services.notifier import Notifier, price_text
from tradepipe.services.trading_engine import TradingEngine
from tradepipe.sources import sample_paths

from .botapi_standin import BotApiStandIn

TOKEN = "7000001:AAF-tradepipe_TEST_token_0123456789"
ANN, BOB, STRANGER = 111_111, 222_222, 999_999
T0 = datetime(2014, 5, 6, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def standin() -> Iterator[BotApiStandIn]:
    server = BotApiStandIn(TOKEN).start()
    server.chats.update((ANN, BOB))
    yield server
    server.stop()


@pytest.fixture
def api(standin: BotApiStandIn) -> Iterator[BotApi]:
    client = BotApi(standin.url, TOKEN, poll_timeout_s=1, backoff_s=0.05)
    yield client
    client.close()


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything logged, at DEBUG, httpx's and httpcore's request lines included."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "tradepipe"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def event(cls, symbol: str | None = "EURUSD", **fields):
    ctx = Context("trading-engine")
    ctx.begin(None, key=repr(sorted(fields.items())).encode())
    ctx.clock.advance(T0)
    return ctx.emit(cls, symbol=symbol, **fields)


def notify(notifier: Notifier, *events) -> None:
    ctx = Context(notifier.name)
    for e in events:
        ctx.begin(e)
        assert list(notifier.handle(e, ctx)) == []


def texts(messages: list[dict], chat_id: int) -> list[str]:
    return [m["text"] for m in messages if m["chat"]["id"] == chat_id]


# -- notifications ------------------------------------------------------------------------

def test_fills_closed_positions_and_alerts_reach_every_configured_chat(standin, api):
    notifier = Notifier([TelegramSink(api, [ANN, BOB])])
    notify(notifier,
           event(OrderPlaced, order_id="ord-1", side="BUY", volume=12_000.0, price=1.3741, reason="signal"),
           event(OrderExecuted, order_id="ord-1", side="BUY", volume=12_000.0, price=1.37412),
           event(PositionClosed, position_id="ord-1", order_id="ord-9", side="BUY", volume=12_000.0,
                 entry_price=1.37412, exit_price=1.37312, pnl=-12.72, reason="stop-loss"),
           event(AlertRaised, rule="daily_loss", severity="critical", message="daily loss limit reached",
                 value=0.021, threshold=0.02),
           event(TradingStateChanged, symbol=None, state="HALTED", reason="manual halt: news"))
    expected = [
        "EURUSD BUY 12,000 @ 1.37412 (order ord-1, signal)",
        "EURUSD BUY 12,000 closed 1.37412 -> 1.37312, PnL -12.72 (stop-loss) (position ord-1)",
        "\U0001f6a8 EURUSD Alert daily_loss: daily loss limit reached (value 0.021, threshold 0.02)",
        "\U0001f6a8 Trading HALTED: manual halt: news",
    ]
    sent = standin.wait_sent(8)
    assert texts(sent, ANN) == texts(sent, BOB) == expected
    assert notifier.sent == 4 and notifier.failed == 0


def test_a_chat_that_cannot_be_reached_does_not_keep_the_message_from_the_others(standin, api, every_log):
    notifier = Notifier([TelegramSink(api, [STRANGER, ANN])])  # the stranger never wrote to the bot
    notify(notifier, event(OrderExecuted, order_id="ord-3", side="SELL", volume=1_500_000.0, price=101.8236,
                           symbol="USDJPY"))
    assert texts(standin.wait_sent(1), ANN) == ["USDJPY SELL 1,500,000 @ 101.824 (order ord-3)"]
    assert notifier.sent == 0 and notifier.failed == 1
    assert f"chat {STRANGER}: Bot API sendMessage: 400 Bad Request: chat not found" in every_log.text


def test_a_429_is_retried_after_its_retry_after(standin, api, every_log):
    standin.throttle("sendMessage", 1)
    TelegramSink(api, [ANN]).send("EURUSD Alert drawdown: drawdown 2.10%", "warning")
    assert texts(standin.wait_sent(1), ANN) == ["\u26a0\ufe0f EURUSD Alert drawdown: drawdown 2.10%"]
    assert standin.requests.count("sendMessage") == 2  # the refused one, then the delivered one
    assert standin.retried_at["sendMessage"] - standin.throttled_at["sendMessage"] >= 1.0
    assert "Bot API sendMessage: 429 Too Many Requests: retry after 1; retry in 1.0 s" in every_log.text


# -- the client and its token ---------------------------------------------------------------

def test_get_updates_confirms_what_came_before_its_offset(standin, api):
    first = standin.say(ANN, "/status")
    second = standin.say(ANN, "/pnl")
    assert [u["update_id"] for u in api.get_updates(timeout_s=0)] == [first, second]
    assert [u["message"]["text"] for u in api.get_updates(second, timeout_s=0)] == ["/pnl"]
    assert api.get_updates(second + 1, timeout_s=0) == []
    assert standin.updates == []  # confirmed: Telegram forgets them


def test_the_token_is_in_no_log_line_repr_or_error(standin, api, every_log):
    api.get_me()
    standin.say(ANN, "/help")
    api.get_updates(timeout_s=0)
    standin.throttle("sendMessage", 1)
    api.send_message(ANN, "hello")
    with pytest.raises(BotApiError) as refused:
        BotApi(standin.url, "7000001:AAF-not_the_token").get_me()
    assert refused.value.code == 401 and str(refused.value) == "Bot API getMe: 401 Unauthorized"
    unreachable = BotApi("http://127.0.0.1:9", TOKEN, retries=1, backoff_s=0.01)
    with pytest.raises(BotApiError) as down:
        unreachable.get_me()
    assert down.value.code is None and "ConnectError" in str(down.value) and "(2 attempts)" in str(down.value)
    # httpx logged its request lines, masked
    assert any(r.name == "httpx" and "/bot***/sendMessage" in r.getMessage() for r in every_log.records)
    assert any(r.name.startswith("httpcore") for r in every_log.records)
    secret = TOKEN.split(":", 1)[1]
    assert secret not in every_log.text
    assert all(secret not in r.getMessage() for r in every_log.records)
    for text in (repr(api), repr(unreachable), str(refused.value), repr(refused.value), str(down.value),
                 repr(TelegramSettings(token=TOKEN))):
        assert secret not in text
    with pytest.raises(ValueError, match="telegram.token is empty"):
        BotApi(standin.url, SecretStr(""))


# -- commands -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def traded(tmp_path_factory):
    """A real EMA-cross run into a SQLite bus, and the read store rebuilt from it."""
    root = tmp_path_factory.mktemp("traded")
    bus = open_bus(f"sqlite:///{root / 'bus.db'}", create=True)
    run_pipeline(RunRequest(paths=sample_paths(), settings=Settings(), strategy="ema-cross",
                            start=datetime(2014, 5, 5, tzinfo=timezone.utc),
                            end=datetime(2014, 5, 5, 6, tzinfo=timezone.utc)), bus)
    store_url = f"sqlite:///{root / 'read.db'}"
    store = open_read_store(store_url)
    rebuild(bus, store)
    events = EventStore(bus)
    orders = [s.event for s in events.replay(ORDERS)]
    performance = [s.event for s in events.replay(PERFORMANCE)]
    yield SimpleNamespace(bus=bus, store=store, store_url=store_url, orders=orders, performance=performance)
    store.close()
    bus.close()


@pytest.fixture
def bot(standin, traded) -> Iterator[TelegramBot]:
    settings = TelegramSettings(token=TOKEN, base_url=standin.url, chat_ids=(ANN, BOB), poll_timeout_s=1)
    running = TelegramBot(settings, read=traded.store, bus=traded.bus, codec=JsonCodec())
    assert running.start()["username"] == "tradepipe_test_bot"
    yield running
    running.stop()


def of(events, cls) -> list:
    return [e for e in events if type(e) is cls]


def trading_commands(bus) -> list[TradingCommand]:
    return [s.event for s in EventStore(bus).replay(SYSTEM) if type(s.event) is TradingCommand]


def replies(standin: BotApiStandIn, *commands: str, chat_id: int = ANN, username: str = "ann") -> list[str]:
    """Say each command (in order) and return the bot's replies to ``chat_id``."""
    before = len(standin.sent)
    for command in commands:
        standin.say(chat_id, command, username=username)
    return texts(standin.wait_sent(before + len(commands))[before:], chat_id)


def test_each_command_is_answered_with_the_figures_of_the_events(standin, bot, traded, every_log):
    fills, closed = of(traded.orders, OrderExecuted), of(traded.orders, PositionClosed)
    entries = {p.order_id for p in of(traded.orders, OrderPlaced) if p.reason == "signal"}
    opened = [f for f in fills if f.order_id in entries - {c.position_id for c in closed}]
    assert (len(fills), len(closed), len(opened)) == (46, 22, 2)  # the run this test was written on
    portfolio = traded.store.portfolio()  # equity and unrealized PnL are priced at query time
    # realized as the analytics service counts it: closed positions only (an open one's entry
    # commission is in its unrealized PnL)
    realized = sum(c.pnl for c in closed)
    assert portfolio.realized_pnl == pytest.approx(realized, abs=1e-6)
    status, positions, pnl, performance, help_ = replies(standin, "/status", "/positions", "/pnl@tradepipe_test_bot",
                                                         "/performance", "/help")
    assert status == (
        f"Trading ACTIVE\nEquity {portfolio.equity:,.2f} (realized {realized:+,.2f}, unrealized "
        f"{portfolio.unrealized_pnl:+,.2f})\nPositions: 2 open, 22 closed; 46 fills, last "
        f"{fills[-1].timestamp:%Y-%m-%d %H:%M} UTC")
    unrealized = {view.position_id: view.unrealized_pnl for view in traded.store.positions(open_only=True)}
    assert positions == "2 open positions:\n" + "\n".join(
        f"{f.symbol} {f.side} {f.volume:,.0f} @ {price_text(f.price)} since {f.timestamp:%Y-%m-%d %H:%M} UTC, "
        f"unrealized {unrealized[f.order_id]:+,.2f} (position {f.order_id})" for f in opened)
    assert pnl == (f"Realized PnL {realized:+,.2f} over 22 closed positions\n"
                   f"Unrealized PnL {portfolio.unrealized_pnl:+,.2f} on 2 open positions\n"
                   f"Equity {portfolio.equity:,.2f} from 100,000.00 ({portfolio.equity / 100_000 - 1:+.2%})")
    latest = traded.performance[-1]
    m = latest.metrics
    figures = (f"sharpe {m['sharpe']:.4g}, sortino {m['sortino']:.4g}, max_drawdown {m['max_drawdown']:.2%}, "
               f"win_rate {m['win_rate']:.2%}, profit_factor {m['profit_factor']:.4g}, exposure {m['exposure']:.2%}, "
               f"hit_rate_all_ensemble {m['hit_rate_all_ensemble']:.2%}, hit_rate_ensemble {m['hit_rate_ensemble']:.2%}")
    assert performance == (
        f"Performance at {latest.timestamp:%Y-%m-%d %H:%M} UTC\nEquity {latest.equity:,.2f}, realized "
        f"{latest.realized_pnl:+,.2f}, unrealized {latest.unrealized_pnl:+,.2f}, {latest.trades} trades\n{figures}")
    assert help_ == HELP and "/halt [reason]" in HELP
    assert TOKEN.split(":", 1)[1] not in every_log.text


def test_halt_and_resume_publish_trading_commands_the_engine_obeys(standin, bot, traded, api):
    (halted,) = replies(standin, "/halt news at 14:30")
    (resumed,) = replies(standin, "/resume", chat_id=BOB, username="bob")
    halt, resume = trading_commands(traded.bus)[-2:]
    assert (halt.command, halt.reason) == ("halt", f"news at 14:30 (telegram chat {ANN} @ann)")
    assert (resume.command, resume.reason) == ("resume", f"telegram chat {BOB} @bob")
    assert halted == f"Halt sent (event {halt.event_id}); the engine confirms with a 'Trading HALTED' message."
    assert resumed == f"Resume sent (event {resume.event_id}); the engine confirms with a 'Trading ACTIVE' message."
    # the engine answers them, and the notifier tells every chat
    engine, notifier = TradingEngine(Settings().trading, broker_for(Settings())), Notifier([TelegramSink(api, [ANN])])
    ctx = Context(engine.name)
    before = len(standin.sent)
    for command in (halt, resume):
        ctx.begin(command)
        notify(notifier, *engine.handle(command, ctx))
    assert texts(standin.wait_sent(before + 2)[before:], ANN) == [
        f"\U0001f6a8 Trading HALTED: manual halt: news at 14:30 (telegram chat {ANN} @ann) (drawdown 0.00%, "
        "equity 100,000.00)",
        f"Trading ACTIVE: manual resume: telegram chat {BOB} @bob (drawdown 0.00%, equity 100,000.00)"]


def test_a_redelivered_command_publishes_the_same_event(bot):
    message = {"message_id": 77, "date": 1_400_000_000, "chat": {"id": ANN, "type": "private"},
               "from": {"id": ANN, "username": "ann"}, "text": "/halt"}
    assert bot.commands.answer(message) == bot.commands.answer(message)  # same eventId: consumers drop the copy


def test_other_chats_are_ignored_and_logged_and_unknown_commands_get_a_hint(standin, bot, traded, every_log):
    published = trading_commands(traded.bus)
    standin.say(STRANGER, "/halt now", username="mallory")
    assert replies(standin, "/nope", "hello") == ["Unknown command /nope. /help lists the commands.",
                                                   "Commands start with /; /help lists them."]
    assert texts(standin.sent, STRANGER) == []
    assert trading_commands(traded.bus) == published  # none from the stranger
    assert f"Telegram: ignored '/halt' from chat {STRANGER} (mallory), not in telegram.chat_ids" in every_log.text


def test_the_loop_stops_cleanly_and_a_refused_token_stops_it(standin, traded, every_log):
    settings = TelegramSettings(token=TOKEN, base_url=standin.url, chat_ids=(ANN,), poll_timeout_s=1)
    running = TelegramBot(settings, read=traded.store, bus=traded.bus, codec=JsonCodec())
    running.start()
    standin.wait_polls(1)
    running.stop()
    assert not running._thread.is_alive()
    refused = TelegramBot(settings.model_copy(update={"token": SecretStr("7000001:AAF-revoked")}),
                          read=traded.store, bus=traded.bus, codec=JsonCodec())
    with pytest.raises(BotApiError, match="401 Unauthorized"):
        refused.start()
    refused.commands.run(threading.Event())  # returns: a 401 will not heal by polling again
    refused.stop()
    assert "Telegram commands stop: Bot API getUpdates: 401 Unauthorized (check telegram.token)" in every_log.text


#: `tradepipe ...` with every logger at DEBUG (httpx's request lines included) on stderr
DEBUG_CLI = ("import logging, sys; logging.basicConfig(level=logging.DEBUG); from tradepipe.cli import app; "
             "app(sys.argv[1:], prog_name='tradepipe')")


@pytest.mark.slow
def test_the_notifier_process_sends_to_telegram_and_answers_commands(standin, traded, tmp_path):
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    with open_bus(bus_url, create=True) as bus:
        ensure_topics(bus, partitions=2)
        with bus.producer() as producer:
            publish(producer, JsonCodec(), [
                event(OrderPlaced, order_id="ord-1", side="BUY", volume=12_000.0, price=1.3741, reason="signal"),
                event(OrderExecuted, order_id="ord-1", side="BUY", volume=12_000.0, price=1.37412)])
    env = {**os.environ, "TRADEPIPE_TELEGRAM__TOKEN": TOKEN, "TRADEPIPE_TELEGRAM__BASE_URL": standin.url,
           "TRADEPIPE_TELEGRAM__CHAT_IDS": f"[{ANN}]", "TRADEPIPE_TELEGRAM__POLL_TIMEOUT_S": "1",
           "TRADEPIPE_READ__STORE": traded.store_url}
    process = subprocess.Popen([sys.executable, "-c", DEBUG_CLI, "service", "notifier", "--bus", bus_url,
                                "--strategy", "ema-cross", "--port", "0"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert texts(standin.wait_sent(1, timeout_s=60), ANN) == ["EURUSD BUY 12,000 @ 1.37412 (order ord-1, signal)"]
        (pnl,) = replies(standin, "/pnl")
        assert pnl.startswith("Realized PnL ") and "over 22 closed positions" in pnl
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"telegram: @tradepipe_test_bot notifies and answers chats {ANN}" in output
    assert "httpx:HTTP Request: POST " in output and "/bot***/getUpdates" in output
    assert TOKEN.split(":", 1)[1] not in output


def test_a_read_store_or_bus_that_fails_is_reported_in_the_answer(api, tmp_path, every_log):
    store = open_read_store(f"sqlite:///{tmp_path / 'gone.db'}")
    bus = open_bus(f"sqlite:///{tmp_path / 'bare-bus.db'}", create=True)  # no topics: nothing can be published
    commands = TelegramCommands(api, [ANN], store, bus, JsonCodec())
    store.close()  # the database goes away under the bot
    message = {"message_id": 1, "date": 1_400_000_000, "chat": {"id": ANN, "type": "private"}, "text": "/status"}
    assert commands.answer(message) == "/status failed: ProgrammingError: Cannot operate on a closed database."
    assert commands.answer({**message, "text": "/halt"}).startswith("/halt failed: UnknownTopicError: ")
    assert commands.answer({**message, "text": "/help"}) == HELP  # and it keeps answering what it can
    assert "Telegram: /status failed" in every_log.text and "Telegram: /halt failed" in every_log.text
    commands.close()
    bus.close()
