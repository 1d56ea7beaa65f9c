"""Redis Streams backend specifics (the shared behaviour is in test_contract.py): key layout and
offsets, crashed and rebalanced group members, trimming, pub/sub fan-out, an unreachable or lost
Redis. Real Redis: the machine's (a fresh key prefix per test), and a private redis-server for
the tests that stop it."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from infra import REDIS_HOST, REDIS_PORT, REDIS_TEST_DB, free_port, poll_until, wait_for_port
from tradepipe.bus import BusError, BusUnavailableError, BusURLError, TopicPartition, open_bus
from tradepipe.bus.redis import parse_redis_url



def prefix_of(url: str) -> str:
    return url.split("prefix=", 1)[1].split("&", 1)[0]


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client on the test database, to look at what the backend wrote."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_TEST_DB)
    yield client
    client.close()


def test_url_options_override_settings_and_bad_ones_are_named():
    client_url, address, options = parse_redis_url(
        "redis://:secret@127.0.0.1:6390/3?maxlen=none&pubsub_topics=a,b&session_timeout_ms=2000",
        {"maxlen": 5, "session_timeout_ms": 9000, "claim_idle_ms": 100})
    assert client_url == "redis://:secret@127.0.0.1:6390/3"
    assert address == "redis://127.0.0.1:6390/3"  # messages never show the password
    assert (options.maxlen, options.pubsub_topics, options.session_timeout_ms, options.claim_idle_ms) == (
        None, ("a", "b"), 2000, 100)
    with pytest.raises(BusURLError, match="no_such_option"):
        parse_redis_url("redis://127.0.0.1:6379/0?no_such_option=1")
    with pytest.raises(BusURLError, match="session_timeout_ms"):
        parse_redis_url("redis://127.0.0.1:6379/0?session_timeout_ms=soon")
    with pytest.raises(BusURLError, match="host:port/db"):
        parse_redis_url("redis://127.0.0.1:6379/nine")


def test_key_layout_and_contiguous_offsets_with_two_producers_at_once(redis_url, raw):
    prefix = prefix_of(redis_url)
    with open_bus(f"{redis_url}&pipeline_size=7") as bus:
        bus.create_topic("prices", 2, retention_ms=60_000)
        per_producer = 3000

        def produce(name: bytes) -> None:
            with bus.producer() as producer:
                for i in range(per_producer):
                    producer.send("prices", b"%s-%d" % (name, i), partition=1, headers=[("from", name)])

        threads = [threading.Thread(target=produce, args=(name,)) for name in (b"a", b"b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with bus.producer() as producer:
            producer.send("prices", b"keyed", b"EURUSD", timestamp_ms=1234, partition=0)

        assert raw.hget(f"{prefix}:topics", "prices") == b'{"partitions":2,"retention_ms":60000}'
        ids = [entry_id for entry_id, _ in raw.xrange(f"{prefix}:prices:1")]
        assert ids == [b"0-%d" % n for n in range(1, 2 * per_producer + 1)]
        assert raw.xrange(f"{prefix}:prices:0") == [(b"0-1", {b"v": b"keyed", b"t": b"1234", b"k": b"EURUSD"})]
        assert bus.end_offsets("prices") == {0: 1, 1: 2 * per_producer}

        with bus.consumer(None) as reader:
            reader.assign([TopicPartition("prices", 1)])
            records = poll_until(reader, 2 * per_producer)
        assert [r.offset for r in records] == list(range(2 * per_producer))
        for name in (b"a", b"b"):  # each producer's records in its send order
            assert [r.value for r in records if r.headers == (("from", name),)] == [
                b"%s-%d" % (name, i) for i in range(per_producer)]


def test_a_crashed_members_pending_entries_are_claimed_once_idle(redis_url, raw):
    """A member dies holding polled, uncommitted records: the survivor gets its partition when its
    heartbeat expires, takes its pending entries with XAUTOCLAIM once they are claim_idle_ms old,
    and reads them again from the group's commit."""
    prefix = prefix_of(redis_url)
    url = f"{redis_url}&session_timeout_ms=500&claim_idle_ms=4000"
    with open_bus(url) as bus:
        bus.create_topic("ticks", 1)
        with bus.producer() as producer:
            for i in range(20):
                producer.send("ticks", b"%d" % i, b"k")
        group = "strategy"
        # instance ids fix the split: the first in sort order owns the only partition
        crashed = bus.consumer(group, ["ticks"], instance_id="a-crashes")
        survivor = bus.consumer(group, ["ticks"], instance_id="b-survives")
        try:
            polled = poll_until(crashed, 20)
            last_read = time.monotonic()
            assert [r.offset for r in polled] == list(range(20))
            crashed.commit({TopicPartition("ticks", 0): 5})  # then dies without committing the rest
            assert survivor.poll(timeout_s=0.2) == []  # the crashed member still counts as alive

            # its heartbeat expires after 0.5 s, but its entries are claimable only after 4 s
            while time.monotonic() - last_read < 1.5:
                assert survivor.poll(timeout_s=0.1) == []
            assert survivor.assignment() == {TopicPartition("ticks", 0)}
            stream = f"{prefix}:ticks:0"
            assert raw.xpending(stream, group)["consumers"] == [{"name": b"a-crashes", "pending": 15}]

            again = poll_until(survivor, 15, timeout_s=10)
            assert [r.offset for r in again] == list(range(5, 20))
            assert raw.xpending(stream, group)["consumers"] == [{"name": b"b-survives", "pending": 15}]
            survivor.commit()
            assert raw.xpending(stream, group)["pending"] == 0
            assert bus.committed_offsets(group, "ticks") == {0: 20}
        finally:
            survivor.close()
            crashed.close()


def test_a_joining_member_gets_the_uncommitted_records_of_its_partitions_at_once(redis_url):
    """Rebalance on join: the old owner releases the partitions it lost at its next membership
    refresh (no claim_idle_ms wait), and the new owner reads them from the group's commit, so
    nothing is lost (what the old owner read meanwhile comes twice: at-least-once)."""
    with open_bus(f"{redis_url}&claim_idle_ms=600000") as bus:
        bus.create_topic("signals", 4)
        with bus.producer() as producer:
            for i in range(200):
                producer.send("signals", b"%d" % i, b"k%d" % (i % 10))
        ends = bus.end_offsets("signals")
        first = bus.consumer("g", ["signals"])
        second = None
        try:
            early = poll_until(first, 120)
            first.commit({tp: 10 for tp in first.assignment()})
            second = bus.consumer("g", ["signals"])
            moved = second.assignment()
            assert len(moved) == 2
            by_first, by_second = [], []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(by_second) < sum(ends[tp.partition] - 10 for tp in moved):
                by_first += first.poll(200, timeout_s=0.02)
                by_second += second.poll(200, timeout_s=0.02)
            assert first.assignment() == {TopicPartition("signals", p) for p in range(4)} - moved
            for tp in moved:  # from the group's commit to the end, in order
                assert [r.offset for r in by_second if r.tp == tp] == list(range(10, ends[tp.partition]))
            assert {r.tp for r in by_second} <= moved
            assert len({(r.partition, r.offset) for r in early + by_first + by_second}) == 200
        finally:
            first.close()
            if second is not None:
                second.close()


def test_a_static_member_restarted_with_the_same_id_fences_its_predecessor(redis_url, raw):
    with open_bus(f"{redis_url}&session_timeout_ms=600") as bus:
        bus.create_topic("orders", 1)
        with bus.producer() as producer:
            for i in range(5):
                producer.send("orders", b"%d" % i)
        old = bus.consumer("svc", ["orders"], instance_id="svc-0")
        assert len(poll_until(old, 5)) == 5
        with bus.consumer("svc", ["orders"], instance_id="svc-0") as new:
            # at once (no session to wait for): it takes its predecessor's place and partitions
            assert [r.offset for r in poll_until(new, 5)] == list(range(5))
            time.sleep(0.3)  # past the predecessor's next heartbeat (every session / 3)
            with pytest.raises(BusError, match="fenced"):
                old.poll()
            old.close()  # leaves without touching what its successor has pending
            stream = f"{prefix_of(redis_url)}:orders:0"
            assert raw.xpending(stream, "svc")["consumers"] == [{"name": b"svc-0", "pending": 5}]
            new.commit()
            assert bus.committed_offsets("svc", "orders") == {0: 5}


def test_trimming_never_drops_what_a_group_has_not_committed(redis_url, raw):
    prefix = prefix_of(redis_url)
    stream = f"{prefix}:log:0"
    with open_bus(f"{redis_url}&maxlen=10") as bus:
        bus.create_topic("log", 1)
        producer = bus.producer()

        def append(count: int) -> None:
            for _ in range(count):
                producer.send("log", b"x")
            producer.flush()  # trims: maxlen // 10 = every append

        def first_offset() -> int:
            return int(raw.xrange(stream, count=1)[0][0][2:]) - 1

        with bus.consumer("slow", ["log"]) as slow, bus.consumer("fast", ["log"]) as fast:
            append(5)
            assert [r.offset for r in poll_until(slow, 3)] == [0, 1, 2]
            slow.commit()  # the slow group needs offsets 3.. from now on
            assert len(poll_until(fast, 5)) == 5
            fast.commit()
            append(95)
            assert first_offset() == 3  # far beyond maxlen: the slow group has not committed them
            assert [r.offset for r in poll_until(slow, 97)] == list(range(3, 100))
            slow.commit({TopicPartition("log", 0): 40})
            assert len(poll_until(fast, 95)) == 95
            fast.commit()
            append(10)
            assert first_offset() == 40  # committed by both groups and beyond maxlen: gone

            bus.delete_group("slow")  # a group gone for good no longer holds the stream
            append(1)
            assert first_offset() == 100  # the fast group has not committed the last 11 yet
            assert len(poll_until(fast, 11)) == 11
            fast.commit()
            append(1)
            assert first_offset() == 112 - 10  # everything committed: maxlen alone decides
        producer.close()
        with bus.consumer(None) as replay:  # a reader from 0 starts at the first entry kept
            replay.assign([TopicPartition("log", 0)])
            assert [r.offset for r in poll_until(replay, 10)] == list(range(102, 112))


def test_pubsub_fans_out_flushed_records_of_the_selected_topics(redis_url):
    with open_bus(f"{redis_url}&pubsub_topics=order-events") as bus:
        bus.create_topic("order-events", 2)
        bus.create_topic("market-data-events", 2)
        with pytest.raises(ValueError, match="market-data-events"):
            bus.live(["market-data-events"])
        with bus.live(["order-events"]) as feed:
            with bus.producer() as producer:
                for i in range(6):
                    producer.send("order-events", b"order-%d" % i, b"SYM%d" % (i % 3), timestamp_ms=1000 + i,
                                  headers=[("type", b"OrderPlaced")])
                    producer.send("market-data-events", b"tick-%d" % i, b"SYM%d" % (i % 3))
            live = [feed.get(5.0) for _ in range(6)]
            assert feed.get(0.2) is None  # nothing of the topic that is not fanned out
        with bus.consumer(None) as reader:
            reader.assign([TopicPartition("order-events", p) for p in range(2)])
            stored = poll_until(reader, 6)
        key = lambda r: (r.partition, r.offset)  # noqa: E731
        assert sorted(live, key=key) == sorted(stored, key=key)  # same records, offsets and all
        assert [r.value for r in live] == [b"order-%d" % i for i in range(6)]


def test_unreachable_redis_at_start_is_a_clear_error():
    port = free_port()
    with pytest.raises(BusError) as raised:
        open_bus(f"redis://127.0.0.1:{port}/0?connect_timeout_s=1")
    assert f"redis://127.0.0.1:{port}/0: Redis not reachable after" in str(raised.value)
    assert "attempts" in str(raised.value)


class PrivateRedis:
    """A redis-server of our own, so a test can stop it; append-only file, so a restart keeps
    the data (as a production Redis for a bus must)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


def test_redis_lost_mid_run_keeps_unsent_records_and_delivers_them_once_back(private_redis):
    url = f"redis://127.0.0.1:{private_redis.port}/0?prefix=lost-{uuid.uuid4().hex[:6]}"
    with open_bus(url) as bus:
        bus.create_topic("fills", 1)
        producer = bus.producer()
        consumer = bus.consumer("g", ["fills"])
        for i in range(10):
            producer.send("fills", b"%d" % i)
        producer.flush()
        assert len(poll_until(consumer, 10)) == 10
        consumer.commit()

        private_redis.stop()
        for i in range(10, 20):
            producer.send("fills", b"%d" % i)
        with pytest.raises(BusUnavailableError, match=f"127.0.0.1:{private_redis.port}"):
            producer.flush()
        with pytest.raises(BusUnavailableError):
            consumer.poll()

        private_redis.start()
        assert producer.flush() == 10
        records = poll_until(consumer, 10)
        assert [(r.offset, r.value) for r in records] == [(i, b"%d" % i) for i in range(10, 20)]
        producer.close()
        consumer.close()
