"""SQLite backend specifics: URLs, refusing foreign files, durability, several OS processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest

from tradepipe.bus import BusError, BusURLError, TopicPartition, open_bus, partition_for
from tradepipe.bus.sqlite import AUTO_FLUSH_RECORDS

CHILD_PRODUCER = """
import os, sys, time
from tradepipe.bus import open_bus
url, topic, writer, count, go_file = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
with open_bus(url, create=False) as bus, bus.producer() as producer:
    print("ready", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.001)
    for i in range(count):
        producer.send(topic, f"{writer}:{i}".encode(), f"k{i % 7}".encode())
        if i % 50 == 49:
            producer.flush()
"""

CHILD_CONSUMER = """
import json, sys
from tradepipe.bus import open_bus
url, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open_bus(url, create=False) as bus, bus.consumer(group, [topic]) as consumer:
    consumer.assignment()
    print("ready", flush=True)
    values = []
    while len(values) < count:
        values.extend(r.value.decode() for r in consumer.poll(timeout_s=1.0))
    consumer.commit()
print(json.dumps(values))
"""

# Joins a group, reads everything without committing, reports, then waits to be killed.
CHILD_MEMBER = """
import json, sys, time
from tradepipe.bus import open_bus
url, topic, group, instance_id = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] or None
bus = open_bus(url, create=False)
consumer = bus.consumer(group, [topic], instance_id=instance_id)
polled = len(consumer.poll(max_records=10_000, timeout_s=1.0))
print(json.dumps({"polled": polled, "assignment": sorted(p for _, p in consumer.assignment())}), flush=True)
while True:
    consumer.poll(timeout_s=0.05)
"""


def start_child(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def first_line(child: subprocess.Popen) -> str:
    line = child.stdout.readline()
    assert line, f"child exited early: {child.stderr.read()}"
    return line.strip()


def kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/bus.db"


# -- URLs and files -----------------------------------------------------------------------------
def test_relative_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with open_bus("sqlite:///relative.db"), open_bus("sqlite:///sub/nested.db"):
        pass
    with open_bus(f"sqlite:///{tmp_path}/absolute.db?synchronous=full&session_timeout_ms=500&busy_timeout_ms=100"):
        pass
    assert {"relative.db", "absolute.db"} <= set(os.listdir(tmp_path))
    assert (tmp_path / "sub" / "nested.db").exists()


@pytest.mark.parametrize("bad", [
    "sqlite://",
    "sqlite:///",
    "sqlite:///dir/",
    "sqlite://host/x.db",
    "sqlite:///:memory:",
    "sqlite:x.db",
    "sqlite:///x.db?synchronous=OFF",
    "sqlite:///x.db?session_timeout_ms=0",
    "sqlite:///x.db?session_timeout_ms=ten",
    "sqlite:///x.db?busy_timeout_ms=-1",
    "sqlite:///x.db?synchronous=FULL&synchronous=NORMAL",
    "sqlite:///x.db?journal=wal",
    "sqlite:///x.db?synchronous",
])
def test_bad_urls_are_refused(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BusURLError):
        open_bus(bad)
    assert os.listdir(tmp_path) == []


def test_missing_file_without_create(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(BusError, match="does not exist") as raised:
        open_bus(f"sqlite:///{path}", create=False)
    assert str(path) in str(raised.value)
    assert not path.exists()


def test_missing_directory_names_the_path(tmp_path):
    path = tmp_path / "no-dir" / "bus.db"
    with pytest.raises(BusError, match="no-dir"):
        open_bus(f"sqlite:///{path}")


def test_corrupt_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "corrupt.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    for create in (True, False):
        with pytest.raises(BusError, match="not a SQLite database") as raised:
            open_bus(f"sqlite:///{path}", create=create)
        assert str(path) in str(raised.value)
    assert path.read_bytes() == garbage
    assert os.listdir(tmp_path) == ["corrupt.db"]


def test_sqlite_file_of_another_application_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(BusError, match="not a tradepipe bus") as raised:
        open_bus(f"sqlite:///{path}")
    assert str(path) in str(raised.value)
    assert path.read_bytes() == before


def test_unknown_schema_version_is_refused(tmp_path):
    path = tmp_path / "future.db"
    open_bus(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(BusError, match="version 99"):
        open_bus(f"sqlite:///{path}")


def test_empty_file_becomes_a_bus(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with open_bus(f"sqlite:///{path}", create=False) as bus:
        assert bus.create_topic("t", 2).partitions == 2


# -- durability ---------------------------------------------------------------------------------
def test_records_and_group_offsets_survive_reopening(url, drain):
    with open_bus(url) as bus:
        bus.create_topic("ticks", 3, retention_ms=60_000)
        with bus.producer() as producer:
            for i in range(50):
                producer.send("ticks", b"%d" % i, b"k%d" % (i % 4), timestamp_ms=1000 + i, headers=[("i", b"%d" % i)])
        with bus.consumer("g", ["ticks"]) as consumer:
            first = consumer.poll(max_records=20)
            consumer.commit()
            committed = {tp: consumer.committed(tp) for tp in consumer.assignment()}
        ends = bus.end_offsets("ticks")
    with open_bus(url, create=False) as bus:
        assert bus.topic("ticks").retention_ms == 60_000
        assert bus.end_offsets("ticks") == ends
        with bus.consumer("g", ["ticks"]) as consumer:
            assert {tp: consumer.committed(tp) for tp in committed} == committed
            rest = drain(consumer, 30)
        with bus.consumer(None) as reader:
            reader.assign(bus.partitions_of(["ticks"]))
            everything = drain(reader, 50)
    assert sorted(int(r.value) for r in first + rest) == list(range(50))
    for record in everything:
        i = int(record.value)
        assert (record.key, record.timestamp_ms, record.headers) == (b"k%d" % (i % 4), 1000 + i, (("i", record.value),))
        assert record.partition == partition_for(record.key, 3)


def test_producer_flushes_by_itself_when_its_buffer_is_full(url):
    with open_bus(url) as bus:
        bus.create_topic("t", 1)
        producer = bus.producer()
        for _ in range(AUTO_FLUSH_RECORDS + 1):
            producer.send("t", b"x")
        assert bus.end_offsets("t") == {0: AUTO_FLUSH_RECORDS}
        assert producer.flush() == 1
        producer.close()


# -- several processes --------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_produce_concurrently_without_lost_or_duplicate_offsets(url, tmp_path, drain):
    count = 3000
    with open_bus(url) as bus:
        bus.create_topic("ticks", 4)
    go_file = tmp_path / "go"
    writers = [start_child(CHILD_PRODUCER, url, "ticks", name, count, go_file) for name in ("a", "b")]
    for writer in writers:
        assert first_line(writer) == "ready"
    go_file.touch()
    for writer in writers:
        assert writer.wait(timeout=30) == 0, writer.stderr.read()
    with open_bus(url, create=False) as bus:
        assert sum(bus.end_offsets("ticks").values()) == 2 * count
        with bus.consumer(None) as reader:
            reader.assign(bus.partitions_of(["ticks"]))
            records = drain(reader, 2 * count)
    assert Counter(r.value for r in records) == Counter(f"{w}:{i}".encode() for w in "ab" for i in range(count))
    offsets = defaultdict(list)
    sequences = defaultdict(list)  # (writer, key) -> its sequence numbers in log order
    for record in records:
        offsets[record.partition].append(record.offset)
        writer, i = record.value.decode().split(":")
        sequences[writer, record.key].append(int(i))
        assert record.partition == partition_for(record.key, 4)
    assert all(found == list(range(len(found))) for found in offsets.values())
    assert all(found == sorted(found) for found in sequences.values())


@pytest.mark.slow
def test_a_consumer_in_another_process_reads_what_this_one_writes(url):
    with open_bus(url) as bus:
        bus.create_topic("orders", 2)
        child = start_child(CHILD_CONSUMER, url, "orders", "audit", 300)
        assert first_line(child) == "ready"
        sent = []
        with bus.producer() as producer:
            for batch in range(3):
                for i in range(100):
                    sent.append(f"{batch}-{i}")
                    producer.send("orders", sent[-1].encode(), b"acct-%d" % (i % 3))
                producer.flush()
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        assert sorted(json.loads(out)) == sorted(sent)
        with bus.consumer("audit", ["orders"]) as consumer:
            assert {p: consumer.committed(TopicPartition("orders", p)) for p in range(2)} == bus.end_offsets("orders")


@pytest.mark.slow
def test_static_member_takes_over_a_killed_predecessor_at_once(tmp_path, drain):
    url = f"sqlite:///{tmp_path}/bus.db?session_timeout_ms=60000"
    with open_bus(url) as bus:
        bus.create_topic("signals", 4)
        with bus.producer() as producer:
            for i in range(40):
                producer.send("signals", b"%d" % i, b"s%d" % i)
        child = start_child(CHILD_MEMBER, url, "signals", "risk", "svc-1")
        assert json.loads(first_line(child)) == {"polled": 40, "assignment": [0, 1, 2, 3]}
        kill(child)  # SIGKILL: no leave, no commit; its row stays for the 60 s session
        started = time.monotonic()
        with bus.consumer("risk", ["signals"]) as other:
            others_share = other.assignment()
            assert len(others_share) == 2  # the dead member still counts
            with bus.consumer("risk", ["signals"], instance_id="svc-1") as heir:
                assert heir.assignment() == {TopicPartition("signals", p) for p in range(4)} - others_share
                records = drain([heir, other], 40)
        assert sorted(int(r.value) for r in records) == list(range(40))  # nothing was committed
        assert time.monotonic() - started < 10


@pytest.mark.slow
def test_a_killed_member_is_dropped_after_its_session_timeout(tmp_path):
    url = f"sqlite:///{tmp_path}/bus.db?session_timeout_ms=500"
    with open_bus(url) as bus:
        bus.create_topic("signals", 4)
        child = start_child(CHILD_MEMBER, url, "signals", "risk", "")
        first_line(child)
        with bus.consumer("risk", ["signals"]) as survivor:
            assert len(survivor.assignment()) == 2
            kill(child)
            deadline = time.monotonic() + 5
            while len(survivor.assignment()) < 4 and time.monotonic() < deadline:
                survivor.poll(timeout_s=0.05)
            assert survivor.assignment() == {TopicPartition("signals", p) for p in range(4)}


def test_a_replaced_static_member_is_fenced(tmp_path):
    url = f"sqlite:///{tmp_path}/bus.db?session_timeout_ms=300"
    with open_bus(url) as bus:
        bus.create_topic("t", 2)
        zombie = bus.consumer("g", ["t"], instance_id="svc")
        zombie.poll()
        with bus.consumer("g", ["t"], instance_id="svc") as heir:
            assert len(heir.assignment()) == 2
            time.sleep(0.15)  # past the zombie's heartbeat interval (session / 3)
            with pytest.raises(BusError, match="fenced"):
                zombie.poll()
        zombie.close()


def test_values_the_log_cannot_hold_are_refused_at_send(url):
    with open_bus(url) as bus:
        bus.create_topic("t", 2)
        with bus.producer() as producer:
            for bad in (dict(value="text"), dict(value=b"v", key="text"), dict(value=b"v", headers=[("h", "text")])):
                with pytest.raises(TypeError):
                    producer.send("t", partition=0, **bad)
            assert producer.flush() == 0
        bus.close()
        with pytest.raises(BusError):
            bus.producer()


def test_a_damaged_batch_is_a_bus_error_naming_where(tmp_path):
    import sqlite3

    from tradepipe.bus import BusError, open_bus

    url = f"sqlite:///{tmp_path}/bus.db"
    with open_bus(url) as bus:
        bus.create_topic("t", 1)
        producer = bus.producer()
        producer.send("t", b"x", b"k")
        producer.flush()
    db = sqlite3.connect(tmp_path / "bus.db")
    db.execute("UPDATE batches SET records = x'c1c1c1'")
    db.commit()
    db.close()
    with open_bus(url) as bus:
        consumer = bus.consumer(None)
        consumer.assign([("t", 0)])
        with pytest.raises(BusError, match="corrupt record batch in 't' partition 0 at offset 0"):
            consumer.poll()
