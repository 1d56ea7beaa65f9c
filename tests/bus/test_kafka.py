"""Kafka backend specifics, against real Tansu brokers (the session's, or private ones where a
test needs a schema registry or S3 storage to restart the broker)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import confluent_kafka as ck
import pytest
from typer.testing import CliRunner

from infra import SeaweedS3, Tansu, free_port
from tradepipe.bus import BusError, BusURLError, TopicPartition, UnknownTopicError, open_bus, partition_for
from tradepipe.bus import kafka as kafka_backend
from tradepipe.bus.kafka import parse_kafka_url
from tradepipe.cli import app


@pytest.fixture
def bus(kafka_url):
    with open_bus(kafka_url) as opened:
        yield opened


def fresh(prefix: str = "kafka") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def read_all(bus, topic: str, count: int, timeout_s: float = 20.0):
    """Every record of ``topic`` through a group-less consumer, until ``count`` arrived."""
    with bus.consumer(None) as consumer:
        consumer.assign(bus.partitions_of([topic]))
        records = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            records += consumer.poll(10_000, timeout_s=0.2)
        return records


# -- URL and options ----------------------------------------------------------------------------
def test_url_query_overrides_settings_with_their_types():
    bootstrap, options = parse_kafka_url(
        "kafka://a:9092,b:9093?linger_ms=20&idempotence=false&compression=zstd&session_timeout_ms=2000"
        "&librdkafka.client.id=tp-test",
        {"linger_ms": 1.0, "acks": "1", "librdkafka": {"socket.keepalive.enable": "true"}})
    assert bootstrap == "a:9092,b:9093"
    assert (options.linger_ms, options.idempotence, options.compression, options.session_timeout_ms, options.acks) == (
        20.0, False, "zstd", 2000, "1")
    assert options.librdkafka == {"socket.keepalive.enable": "true", "client.id": "tp-test"}
    assert options.batch_size == 1_000_000  # untouched: the settings' default


@pytest.mark.parametrize(("url", "problem"), [
    ("kafka://a:9092?compression=brotli", "compression"),
    ("kafka://a:9092?no_such_option=1", "no_such_option"),
    ("kafka://a:9092?session_timeout_ms=soon", "session_timeout_ms"),
    ("kafka://a", "not host:port"),
    ("kafka://a:9092/topic", "expected kafka://"),
])
def test_bad_urls_name_the_problem(url, problem):
    with pytest.raises(BusURLError, match=problem):
        parse_kafka_url(url)


def test_broker_down_at_start_is_a_clear_error_after_retries():
    url = f"kafka://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BusError) as raised:
        open_bus(f"{url}?connect_timeout_s=1.5")
    message = str(raised.value)
    assert message.startswith(f"{url}: broker not reachable after ")
    assert int(message.split(" after ")[1].split()[0]) >= 2  # attempts
    assert time.monotonic() - started < 15


# -- producing ----------------------------------------------------------------------------------
def test_keyed_records_land_where_javas_murmur2_puts_them(bus, tansu):
    ours, theirs = fresh(), fresh()
    bus.create_topic(ours, 7)
    bus.create_topic(theirs, 7)
    keys = [f"SYM{i}".encode() for i in range(60)] + [b"", b"\x00\xff", "é".encode()]
    with bus.producer() as producer:
        for key in keys:
            producer.send(ours, b"v", key)
    raw = ck.Producer({"bootstrap.servers": tansu.bootstrap, "partitioner": "murmur2_random"})
    for key in keys:
        raw.produce(theirs, b"v", key)  # no partition: librdkafka's murmur2 picks it
    assert raw.flush(30) == 0
    placed = {topic: {r.key: r.partition for r in read_all(bus, topic, len(keys))} for topic in (ours, theirs)}
    assert placed[ours] == placed[theirs] == {key: partition_for(key, 7) for key in keys}
    assert len(set(placed[ours].values())) == 7


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4", "zstd"])
def test_compression_round_trips_with_the_setting_given_to_librdkafka(kafka_url, codec):
    with open_bus(f"{kafka_url}&compression={codec}&linger_ms=20") as bus:
        topic = fresh()
        bus.create_topic(topic, 2)
        values = [json.dumps({"symbol": "EURUSD", "bid": 1.1 + i / 1e5, "seq": i}).encode() * 3 for i in range(500)]
        producer = bus.producer()
        assert producer.config["compression.type"] == codec and producer.config["linger.ms"] == 20
        for i, value in enumerate(values):
            producer.send(topic, value, b"k%d" % (i % 3))
        assert producer.flush() == 500
        producer.close()
        assert sorted(r.value for r in read_all(bus, topic, 500)) == sorted(values)


def test_headers_round_trip_exactly_including_another_clients_null_values(bus, tansu):
    topic = fresh()
    bus.create_topic(topic, 1)
    with bus.producer() as producer:
        producer.send(topic, b"a", headers=[("type", b"MarketDataReceived"), ("schemaVersion", b"1"), ("e", b"")])
        producer.send(topic, b"b")
    raw = ck.Producer({"bootstrap.servers": tansu.bootstrap})
    raw.produce(topic, b"c", partition=0, headers=[("null", None), ("dup", b"1"), ("dup", b"2")])
    raw.flush(30)
    a, b, c = read_all(bus, topic, 3)
    assert a.headers == (("type", b"MarketDataReceived"), ("schemaVersion", b"1"), ("e", b""))
    assert b.headers == ()
    assert c.headers == (("null", b""), ("dup", b"1"), ("dup", b"2"))


def test_sending_to_a_missing_topic_is_refused_without_creating_it(bus):
    name = fresh("missing")
    with bus.producer() as producer, pytest.raises(UnknownTopicError):
        producer.send(name, b"x", b"k")
    assert name not in bus.topics()


def test_a_full_queue_blocks_send_until_the_broker_takes_more(kafka_url):
    with open_bus(f"{kafka_url}&queue_max_messages=5&linger_ms=1") as bus:
        topic = fresh()
        bus.create_topic(topic, 2)
        with bus.producer() as producer:
            for i in range(2000):
                producer.send(topic, b"%d" % i, b"k%d" % (i % 7))
            assert producer.flush() == 2000
        assert sorted(int(r.value) for r in read_all(bus, topic, 2000)) == list(range(2000))


def test_flush_raises_the_brokers_reason_for_a_rejected_record(tmp_path):
    """Tansu's schema registry validates JSON values; a non-conforming one fails its batch."""
    (tmp_path / "schema").mkdir()
    topic = "quotes"
    (tmp_path / "schema" / f"{topic}.json").write_text(json.dumps({"type": "object", "properties": {"value": {
        "type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"]}}}))
    broker = Tansu(cwd=tmp_path, schema_registry="file://./schema").start()
    try:
        with open_bus(f"{broker.url}?idempotence=false") as bus:
            bus.create_topic(topic, 1)
            with bus.producer() as producer:
                producer.send(topic, b'{"price": 1.5}')
                assert producer.flush() == 1
                producer.send(topic, b'{"size": 3}')
                with pytest.raises(BusError, match="INVALID_RECORD") as raised:
                    producer.flush()
                assert "1 of 1 records not delivered" in str(raised.value) and f"{topic}[0]" in str(raised.value)
                producer.send(topic, b'{"price": 2.5}')
                assert producer.flush() == 1  # the failure was reported once
            assert [r.value for r in read_all(bus, topic, 2)] == [b'{"price": 1.5}', b'{"price": 2.5}']
    finally:
        broker.stop()


def test_producer_delivers_everything_across_a_broker_restart(tmp_path):
    """S3 storage keeps the log across a SIGKILL; a non-idempotent producer retries until the
    broker is back (Tansu loses acknowledged records of idempotent producers on a kill)."""
    s3 = SeaweedS3(tmp_path / "s3")
    s3.start()
    broker = Tansu("s3://tansu/", env=s3.tansu_env()).start()
    try:
        with open_bus(f"{broker.url}?idempotence=false&linger_ms=5&session_timeout_ms=2000") as bus:
            topic = fresh()
            bus.create_topic(topic, 2)
            total = 6000
            killed, all_sent, restarted = threading.Event(), threading.Event(), threading.Event()

            def restart() -> None:
                broker.kill()
                killed.set()
                all_sent.wait(60)  # the last two thirds are sent while the broker is down
                time.sleep(0.5)
                broker.start()
                restarted.set()

            with bus.producer() as producer:
                for i in range(total):
                    producer.send(topic, b"%d" % i, b"k%d" % (i % 5))
                    if i % 500 == 0:
                        time.sleep(0.05)  # the first third is in flight when the broker dies
                    if i == total // 3:
                        threading.Thread(target=restart).start()
                        assert killed.wait(10)
                all_sent.set()
                assert producer.flush() == total
                assert restarted.is_set()
            received = Counter(int(r.value) for r in read_all(bus, topic, total, timeout_s=60))
            duplicates = sum(received.values()) - len(received)
            print(f"broker restart: {total} sent, {len(received)} distinct received, {duplicates} duplicates")
            assert set(received) == set(range(total))
    finally:
        broker.stop()
        s3.stop()


# -- consuming ----------------------------------------------------------------------------------
def test_end_offsets_and_latest_are_true_ends_whatever_the_batching(bus):
    topic = fresh()
    bus.create_topic(topic, 2)
    with bus.producer() as producer:
        for batch in range(3):
            for i in range(10):
                producer.send(topic, b"x", partition=0)
            producer.flush()
    assert bus.end_offsets(topic) == {0: 30, 1: 0}
    with bus.consumer(fresh("group"), [topic], auto_offset_reset="latest") as consumer:
        assert consumer.position(TopicPartition(topic, 0)) == 30
        with bus.producer() as producer:
            producer.send(topic, b"new", partition=0)
        deadline = time.monotonic() + 10
        records = []
        while not records and time.monotonic() < deadline:
            records = consumer.poll(timeout_s=0.2)
        assert [(r.offset, r.value) for r in records] == [(30, b"new")]


def test_retention_is_read_back_from_the_broker_by_another_bus(kafka_url):
    kept, forever = fresh(), fresh()
    with open_bus(kafka_url) as creator:
        creator.create_topic(kept, 1, retention_ms=3_600_000)
        creator.create_topic(forever, 1)
    with open_bus(kafka_url) as reader:
        topics = reader.topics()
        assert (topics[kept].retention_ms, topics[forever].retention_ms) == (3_600_000, None)
        assert reader.create_topic(kept, 5).partitions == 1  # unchanged


def test_a_full_consumer_buffer_pauses_fetching_and_resumes_without_loss(bus, monkeypatch):
    monkeypatch.setattr(kafka_backend, "MAX_BUFFERED_RECORDS", 300)
    monkeypatch.setattr(kafka_backend, "DRAIN_BATCH", 100)
    topic = fresh()
    bus.create_topic(topic, 2)
    with bus.producer() as producer:
        for i in range(2000):
            producer.send(topic, b"%d" % i, partition=i % 2)
    with bus.consumer(fresh("group"), [topic]) as consumer:
        consumer.assignment()
        time.sleep(1.0)  # let the thread fill its buffer
        assert 300 <= len(consumer._buffer) < 300 + 100 + 1  # bound + one drained batch (+ the polled one)
        records = []
        deadline = time.monotonic() + 20
        while len(records) < 2000 and time.monotonic() < deadline:
            records += consumer.poll(100, timeout_s=0.2)
    for p in (0, 1):
        assert [r.offset for r in records if r.partition == p] == list(range(1000))


def test_start_offsets_apply_when_the_group_assigns(bus):
    topic = fresh()
    bus.create_topic(topic, 2)
    with bus.producer() as producer:
        for i in range(20):
            producer.send(topic, b"%d" % i, partition=i % 2)
    with bus.consumer(fresh("group"), [topic]) as consumer:
        consumer.set_start_offsets({TopicPartition(topic, 0): 7})
        assert consumer.position(TopicPartition(topic, 0)) == 7
        assert consumer.position(TopicPartition(topic, 1)) == 0
        records = []
        deadline = time.monotonic() + 10
        while len(records) < 13 and time.monotonic() < deadline:
            records += consumer.poll(timeout_s=0.2)
        assert sorted((r.partition, r.offset) for r in records) == [(0, o) for o in range(7, 10)] + [(1, o) for o in range(10)]


def test_two_members_split_a_topic_and_a_leave_hands_over_without_loss(bus):
    topic, group = fresh(), fresh("group")
    bus.create_topic(topic, 4)
    with bus.producer() as producer:
        for i in range(400):
            producer.send(topic, b"%d" % i, b"sym%d" % (i % 16))
    stayer, leaver = bus.consumer(group, [topic]), bus.consumer(group, [topic])
    try:
        stayer_share, leaver_share = stayer.assignment(), leaver.assignment()
        assert stayer_share | leaver_share == set(bus.partitions_of([topic])) and not stayer_share & leaver_share
        handled = []
        leaver_share_total = sum(bus.end_offsets(topic)[tp.partition] for tp in leaver_share)
        deadline = time.monotonic() + 10
        while len(handled) < leaver_share_total // 2 and time.monotonic() < deadline:
            handled += leaver.poll(10, timeout_s=0.2)
        leaver.commit()  # what it handled is done; the rest of its share must reach the stayer
        leaver.close()
        deadline = time.monotonic() + 20
        while len({r.value for r in handled}) < 400 and time.monotonic() < deadline:
            handled += stayer.poll(100, timeout_s=0.2)
        assert {int(r.value) for r in handled} == set(range(400))
        assert len(handled) == 400  # the leaver committed all it had, so nothing came twice
        assert stayer.assignment() == set(bus.partitions_of([topic]))
        stayer.commit()
        stayer.close()  # waits for the commit in flight
        assert bus.committed_offsets(group, topic) == bus.end_offsets(topic)
    finally:
        stayer.close()
        leaver.close()


def test_static_membership_is_opt_in_and_works_on_tansu(kafka_url):
    """group.instance.id is sent only with static_membership=true (Tansu takes ~6 s a join then)."""
    with open_bus(f"{kafka_url}&static_membership=true") as bus:
        topic = fresh()
        bus.create_topic(topic, 2)
        with bus.consumer(fresh("group"), [topic], instance_id="svc-0") as consumer:
            assert consumer._consumer is not None and consumer.assignment() == set(bus.partitions_of([topic]))


def test_commit_of_a_closed_or_groupless_consumer_is_refused(bus):
    topic = fresh()
    bus.create_topic(topic, 1)
    with bus.consumer(None) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        with pytest.raises(BusError):
            consumer.commit()
        with pytest.raises(BusError):
            consumer.assign([TopicPartition(topic, 1)])  # no such partition


# -- the topics command -------------------------------------------------------------------------
def test_topics_create_describe_and_list(tansu, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    name = fresh("cli")
    created = cli.invoke(app, ["topics", "create", name, "--partitions", "3", "--retention-ms", "7200000",
                               "--bus", tansu.url], catch_exceptions=False)
    assert created.exit_code == 0 and "created" in created.stdout and "2 h" in created.stdout
    again = cli.invoke(app, ["topics", "create", name, "--partitions", "5", "--bus", tansu.url], catch_exceptions=False)
    assert again.exit_code == 0 and "exists" in again.stdout
    with open_bus(tansu.url) as bus:
        assert bus.topic(name).partitions == 3
        with bus.producer() as producer:
            for i in range(5):
                producer.send(name, b"x", partition=1)
        group = fresh("group")
        with bus.consumer(group, [name]) as consumer:
            consumer.commit({TopicPartition(name, 1): 2})
    described = cli.invoke(app, ["topics", "describe", name, "--group", group, "--bus", tansu.url], catch_exceptions=False)
    assert described.exit_code == 0, described.stdout
    assert f"{name}: 3 partitions, retention 2 h, 5 records" in described.stdout
    row = next(line for line in described.stdout.splitlines() if line.startswith("│ 1 "))
    assert [cell.strip() for cell in row.strip("│").split("│")] == ["1", "5", "2", "3"]
    listed = cli.invoke(app, ["topics", "list", "--bus", tansu.url], catch_exceptions=False)
    assert name in listed.stdout
    missing = cli.invoke(app, ["topics", "describe", "no-such-topic", "--bus", tansu.url])
    assert missing.exit_code == 2 and "unknown topic" in missing.output
