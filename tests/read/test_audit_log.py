"""The audit log (R7.3): hash-chained, append-only (the database refuses edits), idempotent by
eventId, and verify() names the first record someone tampered with."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from rich.console import Console

from tradepipe.events import JsonCodec
from tradepipe.events.types import (
    FeaturesCalculated, MarketDataReceived, OrderExecuted, OrderPlaced, TickData,
)
from tradepipe.read import audit_log
from tradepipe.read.audit_log import (
    GENESIS, AuditLog, AuditLogError, UnknownOrderError, record_hash, render_explanation,
)
from tradepipe.runtime.service import Context

T0 = datetime(2014, 5, 6, 10, 0, tzinfo=timezone.utc)
CODEC = JsonCodec()


def tick(i: int) -> MarketDataReceived:
    ctx = Context("data-bridge")
    ctx.begin(None, key=f"EURUSD|{i}".encode())
    at = T0 + timedelta(seconds=i)
    return ctx.emit(MarketDataReceived, symbol="EURUSD", source="test",
                    data=TickData(bid=1.3800 + i * 1e-5, ask=1.3801 + i * 1e-5, timestamp=at), timestamp=at)


def child(parent, cls, producer: str = "test", key: bytes | None = None, **fields):
    """``cls`` emitted on ``parent`` by ``producer`` (``key`` tells apart outputs of one parent)."""
    ctx = Context(producer)
    ctx.begin(parent, key=None if key is None else parent.event_id.bytes + key)
    return ctx.emit(cls, **fields)


def features(parent) -> FeaturesCalculated:
    return child(parent, FeaturesCalculated, "feature-engineering", timeframe="1m", group="feature-engineering",
                 features={"rsi_14": 55.5, "returns_1": None})


def placed(parent, order_id: str) -> OrderPlaced:
    return child(parent, OrderPlaced, "trading-engine", order_id.encode(), order_id=order_id, side="BUY", volume=10_000.0,
                 price=1.3801, position_id=order_id)


def executed(parent: OrderPlaced) -> OrderExecuted:
    return child(parent, OrderExecuted, "trading-engine", order_id=parent.order_id, side="BUY",
                 volume=parent.volume, price=1.38012, commission=0.7, slippage=0.00002, position_id=parent.order_id)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def filled(tmp_path):
    """A log holding two orders on one shared tick: A placed, A executed, B placed."""
    root = tick(0)
    feats = features(root)
    a = placed(feats, "A")
    a_fill = executed(a)
    b = placed(feats, "B")
    log = AuditLog(tmp_path / "audit.db")
    assert log.append(a, [root, feats]) and log.append(a_fill, [root, feats, a]) and log.append(b, [root, feats])
    log.flush()
    yield log, (root, feats, a, a_fill, b)
    log.close()


def raw(log: AuditLog) -> sqlite3.Connection:
    return sqlite3.connect(log.path, isolation_level=None)


def drop_triggers(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")


def test_records_are_chained_by_hash_and_chain_events_stored_once_with_their_digests(filled):
    log, (root, feats, a, a_fill, b) = filled
    records = log.records("A") + log.records("B")
    assert [(r.seq, r.order_id, r.event_type) for r in records] == [
        (1, "A", "OrderPlaced"), (2, "A", "OrderExecuted"), (3, "B", "OrderPlaced")]
    assert [r.prev_hash for r in records] == [GENESIS, records[0].hash, records[1].hash]
    for r in records:
        assert r.hash == record_hash(r.prev_hash, r.seq, r.event_id, r.order_id, r.position_id, r.event_type,
                                     r.timestamp, r.event_json, r.chain)
    assert records[1].event_json == CODEC.encode(a_fill).decode() and records[1].event_id == str(a_fill.event_id)
    assert records[1].chain_links == [(str(e.event_id), sha(CODEC.encode(e).decode())) for e in (root, feats, a)]
    assert log.event(records[1]) == a_fill and log.chain(records[1]) == [root, feats, a]
    with raw(log) as conn:
        assert conn.execute("SELECT count(*) FROM chain_events").fetchone()[0] == 3  # root, feats, A: once each
    assert log.verify() == log.verify() and log.verify().ok
    result = log.verify()
    assert (result.records, result.chain_events, result.head, result.tampered) == (3, 3, records[2].hash, None)


def test_appending_an_event_again_is_a_no_op_even_after_reopening(filled, tmp_path):
    log, (root, feats, a, a_fill, b) = filled
    assert not log.append(a_fill, [root, feats, a])
    log.close()
    reopened = AuditLog(tmp_path / "audit.db", create=False)
    assert not reopened.append(a, [root]) and len(reopened) == 3
    b_fill = executed(b)
    assert reopened.append(b_fill, [root, feats, b])
    reopened.flush()
    last = reopened.records("B")[-1]
    assert (last.seq, last.prev_hash) == (4, log_hash(reopened, 3))  # the chain goes on from the stored head
    assert reopened.verify().ok and reopened.verify().records == 4
    reopened.close()


def log_hash(log: AuditLog, seq: int) -> str:
    with raw(log) as conn:
        return conn.execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()[0]


def test_the_database_refuses_updates_and_deletes_of_both_tables(filled):
    log, _ = filled
    conn = raw(log)
    for statement in ("UPDATE records SET order_id = 'X' WHERE seq = 1", "DELETE FROM records WHERE seq = 3",
                      "UPDATE chain_events SET event_json = '{}'", "DELETE FROM chain_events"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    assert conn.execute("SELECT count(*), min(order_id) FROM records").fetchone() == (3, "A")
    conn.close()
    assert log.verify().ok


def test_an_edited_record_is_reported_at_its_seq(filled):
    log, _ = filled
    with raw(log) as conn:
        drop_triggers(conn)
        doc = msgspec.json.decode(conn.execute("SELECT event_json FROM records WHERE seq = 2").fetchone()[0])
        doc["price"] = 1.39  # a better fill than the broker gave
        conn.execute("UPDATE records SET event_json = ? WHERE seq = 2", (msgspec.json.encode(doc).decode(),))
    result = log.verify()
    assert not result.ok and result.records == 2
    assert (result.tampered.seq, result.tampered.order_id, result.tampered.problem) == (2, "A", "record-hash")


def test_a_record_edited_and_rehashed_breaks_the_link_of_the_next(filled):
    log, _ = filled
    with raw(log) as conn:
        drop_triggers(conn)
        row = conn.execute("SELECT seq, event_id, order_id, position_id, event_type, timestamp, event_json, chain, "
                           "prev_hash FROM records WHERE seq = 1").fetchone()
        forged = row[:6] + (row[6].replace('"volume":10000.0', '"volume":1.0'),) + row[7:]
        assert forged != row
        conn.execute("UPDATE records SET event_json = ?, hash = ? WHERE seq = 1",
                     (forged[6], record_hash(forged[8], *forged[:8])))
    tampered = log.verify().tampered
    assert (tampered.seq, tampered.problem) == (2, "chain-link")


def test_an_edited_chain_event_is_reported_at_the_first_record_holding_it(filled):
    log, (root, feats, *_) = filled
    with raw(log) as conn:
        drop_triggers(conn)
        conn.execute("UPDATE chain_events SET event_json = replace(event_json, '55.5', '75.5') WHERE event_id = ?",
                     (str(feats.event_id),))
    tampered = log.verify().tampered
    assert (tampered.seq, tampered.order_id, tampered.problem) == (1, "A", "chain-event")
    assert str(feats.event_id) in tampered.detail


def test_a_deleted_record_is_a_chain_break_at_the_next_seq(filled):
    log, _ = filled
    with raw(log) as conn:
        drop_triggers(conn)
        conn.execute("DELETE FROM records WHERE seq = 2")
    result = log.verify()
    assert (result.records, result.tampered.seq, result.tampered.order_id, result.tampered.problem) == (
        2, 3, "B", "chain-link")


def stored_events(log: AuditLog, order_id: str) -> list:
    return [log.event(r) for r in log.records(order_id)]


def test_events_of_is_what_the_file_holds_with_two_writers_and_a_small_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_log, "RECENT_RECORDS", 2)  # the records kept in memory: 2, so most are not
    root = tick(0)
    a = placed(root, "A")
    first = AuditLog(tmp_path / "audit.db")
    assert first.append(a, [root])
    first.flush()
    second = AuditLog(tmp_path / "audit.db")  # another writer of the same file
    b = placed(root, "B")
    assert second.append(b, [root]) and not second.append(a, [root])  # A is in the file, not in its memory
    second.flush()
    a_fill, b_fill = executed(a), executed(b)
    assert first.append(a_fill, [root, a]) and first.append(b_fill, [root, b])  # after the other writer's B
    c = placed(root, "C")
    assert first.append(c, [root]) and first.append(executed(c), [root, c])  # A's records leave the memory
    first.flush()
    for log in (first, second):
        for order_id in "ABC":
            assert log.events_of(order_id) == stored_events(log, order_id)
    assert first.events_of("A") == [a, a_fill] and first.events_of("B") == [b, b_fill]
    assert not first.append(a, [root]) and not first.append(b_fill, [root, b])  # duplicates, remembered or not
    assert [r.seq for r in first.records("B")] == [2, 4] and first.verify().ok and first.verify().records == 6
    second.close()
    first.close()


def test_appends_are_committed_in_batches(tmp_path):
    log = AuditLog(tmp_path / "audit.db", commit_every=3)
    root = tick(0)
    orders = [placed(root, f"O{i}") for i in range(4)]
    committed = []
    with raw(log) as reader:
        for order in orders:
            log.append(order, [root])
            committed.append(reader.execute("SELECT count(*) FROM records").fetchone()[0])
        assert committed == [0, 0, 3, 3]
        log.flush()
        assert reader.execute("SELECT count(*) FROM records").fetchone()[0] == 4
    log.close()


def test_explain_of_an_unknown_order_is_a_lookup_error_naming_it(filled):
    log, _ = filled
    with pytest.raises(UnknownOrderError, match="'nope'") as raised:
        log.explain("nope")
    assert isinstance(raised.value, LookupError) and raised.value.order_id == "nope"


def test_explain_names_what_a_chain_with_gaps_lacks(filled):
    log, (root, feats, a, a_fill, b) = filled
    explanation = log.explain("A")
    assert explanation.events == [a, a_fill] and explanation.tick == root and explanation.features == [feats]
    assert explanation.missing == [
        "the bar", "features: technical-analysis", "features: market-microstructure", "predictions",
        "the signal", "the validator's verdict"]
    console_text = render(explanation)
    assert "rsi_14=55.5" in console_text and "filled BUY 10000 at 1.38012" in console_text
    assert "missing from the causal chain: the bar" in console_text


def render(explanation) -> str:
    console = Console(width=400, file=io.StringIO())
    console.print(render_explanation(explanation))
    return console.file.getvalue()


def test_only_audit_logs_are_opened(tmp_path):
    with pytest.raises(AuditLogError, match="does not exist"):
        AuditLog(tmp_path / "missing.db", create=False)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(AuditLogError, match="not a tradepipe audit log"):
        AuditLog(other)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(AuditLogError, match="not a SQLite database"):
        AuditLog(garbage)
    assert not (tmp_path / "missing.db").exists()
