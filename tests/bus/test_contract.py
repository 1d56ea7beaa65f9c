"""The bus contract (R2.1, R2.3): every backend passes the same scenarios through the public API."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from tradepipe.bus import Bus, BusError, TopicPartition, UnknownTopicError, partition_for


def produce(bus: Bus, topic: str, count: int, key_of=lambda i: f"k{i % 5}".encode()) -> list[bytes]:
    """Send ``count`` records with values b"0", b"1", ...; return the values."""
    values = [str(i).encode() for i in range(count)]
    with bus.producer() as producer:
        for i, value in enumerate(values):
            producer.send(topic, value, key_of(i))
    return values


# -- ordering and partitioning ------------------------------------------------------------------
def test_each_key_keeps_send_order_on_its_partition(bus, new_topic, group, drain):
    topic = new_topic(4)
    keys = [f"SYM{k}".encode() for k in range(8)]
    with bus.producer() as producer:
        for i in range(50):
            for key in keys:
                producer.send(topic, b"%d" % i, key)
    with bus.consumer(group, [topic]) as consumer:
        records = drain(consumer, 400)
    assert len(records) == 400
    by_key = defaultdict(list)
    for record in records:
        assert record.partition == partition_for(record.key, 4)
        by_key[record.key].append(int(record.value))
    assert by_key == {key: list(range(50)) for key in keys}
    by_partition = defaultdict(list)
    for record in records:
        by_partition[record.partition].append(record.offset)
    assert all(offsets == list(range(len(offsets))) for offsets in by_partition.values())


def test_explicit_partition_and_range_check(bus, new_topic, group):
    topic = new_topic(3)
    with bus.producer() as producer:
        producer.send(topic, b"x", b"any-key", partition=2)
        with pytest.raises(ValueError):
            producer.send(topic, b"x", partition=3)
    assert bus.end_offsets(topic) == {0: 0, 1: 0, 2: 1}


# -- groups -------------------------------------------------------------------------------------
def test_single_member_gets_every_partition(bus, new_topic, group):
    topic = new_topic(4)
    with bus.consumer(group, [topic]) as consumer:
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(4)}


def test_two_members_split_partitions_disjointly_and_completely(bus, new_topic, group):
    topic = new_topic(5)
    with bus.consumer(group, [topic]) as first, bus.consumer(group, [topic]) as second:
        a, b = first.assignment(), second.assignment()
        assert a and b and not a & b
        assert a | b == {TopicPartition(topic, p) for p in range(5)}
        assert {len(a), len(b)} == {2, 3}


def test_commit_then_resume_exactly_where_committed(bus, new_topic, group, drain):
    topic = new_topic(4)
    values = produce(bus, topic, 100)
    with bus.consumer(group, [topic]) as first:
        seen = drain(first, 30)
        assert len(seen) == 30
        first.commit()
        positions = {tp: first.position(tp) for tp in first.assignment()}
        assert {tp: first.committed(tp) for tp in positions} == positions
        assert sum(positions.values()) == 30
    with bus.consumer(group, [topic]) as second:
        assert {tp: second.committed(tp) for tp in positions} == positions
        rest = drain(second, 70)
        assert second.poll(timeout_s=0.1) == []
    assert sorted([r.value for r in seen + rest], key=int) == values
    assert not {(r.partition, r.offset) for r in seen} & {(r.partition, r.offset) for r in rest}


def test_commit_explicit_offsets(bus, new_topic, group):
    topic = new_topic(2)
    produce(bus, topic, 10)
    tp = TopicPartition(topic, 0)
    with bus.consumer(group, [topic]) as consumer:
        assert consumer.committed(tp) is None
        assert bus.committed_offsets(group, topic) == {}
        consumer.commit({tp: 1})
        assert consumer.committed(tp) == 1
        assert consumer.committed(TopicPartition(topic, 1)) is None
        assert bus.committed_offsets(group, topic) == {0: 1}
    with bus.consumer(group, [topic]) as consumer:
        consumer.assignment()
        assert consumer.position(tp) == 1
        assert consumer.position(TopicPartition(topic, 1)) == 0


def test_uncommitted_records_are_delivered_again_to_another_member(bus, new_topic, group, drain):
    topic = new_topic(4)
    values = produce(bus, topic, 40)
    survivor = bus.consumer(group, [topic])
    crashed = bus.consumer(group, [topic])
    try:
        survivor_share, crashed_share = survivor.assignment(), crashed.assignment()
        assert survivor_share and crashed_share
        lost = drain(crashed, sum(bus.end_offsets(topic)[tp.partition] for tp in crashed_share))
        assert lost and {r.tp for r in lost} <= crashed_share
        crashed.close()  # no commit: everything it polled must come again
        received = drain(survivor, 40)
        assert sorted(r.value for r in received) == sorted(values)
        assert survivor.assignment() == {TopicPartition(topic, p) for p in range(4)}
        assert {(r.partition, r.offset) for r in lost} <= {(r.partition, r.offset) for r in received}
    finally:
        survivor.close()


def test_two_members_together_receive_everything_exactly_once(bus, new_topic, group, drain):
    topic = new_topic(4)
    values = produce(bus, topic, 200)
    with bus.consumer(group, [topic]) as first, bus.consumer(group, [topic]) as second:
        first.assignment(), second.assignment()
        records = drain([first, second], 200)
        first.commit()
        second.commit()
        assert first.poll(timeout_s=0.05) == [] and second.poll(timeout_s=0.05) == []
    assert len(records) == 200
    assert sorted(r.value for r in records) == sorted(values)
    with bus.consumer(group, [topic]) as late:
        assert late.poll(timeout_s=0.1) == []
        assert {p: late.committed(TopicPartition(topic, p)) for p in range(4)} == bus.end_offsets(topic)


# -- payloads -----------------------------------------------------------------------------------
def test_payloads_keys_headers_and_timestamps_round_trip(bus, new_topic, group, drain):
    topic = new_topic(1)
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    sent = [
        dict(value=big, key=b"big", timestamp_ms=1_700_000_000_000),
        dict(value=b"", key=None, timestamp_ms=1),
        dict(value=b"h", key=b"", headers=[("trace", b"\x00\xff"), ("empty", b""), ("trace", b"2")]),
    ]
    before = int(time.time() * 1000)
    with bus.producer() as producer:
        for kwargs in sent:
            producer.send(topic, **kwargs)
    after = int(time.time() * 1000)
    with bus.consumer(group, [topic]) as consumer:
        big_record, empty, with_headers = drain(consumer, 3)
    assert big_record.value == big and big_record.key == b"big" and big_record.timestamp_ms == 1_700_000_000_000
    assert big_record.headers == ()
    assert empty.value == b"" and empty.key is None and empty.timestamp_ms == 1
    assert with_headers.headers == (("trace", b"\x00\xff"), ("empty", b""), ("trace", b"2"))
    assert with_headers.key == b""
    assert before <= with_headers.timestamp_ms <= after  # default: the time of send
    assert [r.offset for r in (big_record, empty, with_headers)] == [0, 1, 2]


# -- unknown topics -----------------------------------------------------------------------------
def test_unknown_topic_is_refused_everywhere(bus, group):
    with pytest.raises(UnknownTopicError) as raised:
        with bus.producer() as producer:
            producer.send("no-such-topic", b"x", b"k")
            producer.flush()
    assert raised.value.topic == "no-such-topic"
    with pytest.raises(UnknownTopicError):
        bus.consumer(group, ["no-such-topic"])
    with bus.consumer(None) as consumer, pytest.raises(UnknownTopicError):
        consumer.assign([TopicPartition("no-such-topic", 0)])
    with pytest.raises(UnknownTopicError):
        bus.end_offsets("no-such-topic")
    with pytest.raises(UnknownTopicError):
        bus.topic("no-such-topic")


# -- positions ----------------------------------------------------------------------------------
def test_seek_position_and_end_offsets(bus, new_topic, drain):
    topic = new_topic(3)
    with bus.producer() as producer:
        for i in range(10):
            producer.send(topic, b"%d" % i, partition=1)
    assert bus.end_offsets(topic) == {0: 0, 1: 10, 2: 0}
    tp = TopicPartition(topic, 1)
    with bus.consumer(None) as consumer:
        consumer.assign([tp])
        assert consumer.assignment() == {tp}
        assert consumer.position(tp) == 0
        consumer.seek(tp, 5)
        assert consumer.position(tp) == 5
        records = drain(consumer, 3)
        assert [(r.offset, r.value) for r in records] == [(5, b"5"), (6, b"6"), (7, b"7")]
        assert consumer.position(tp) == 8
        consumer.seek(tp, 2)
        assert [r.offset for r in drain(consumer, 8)] == list(range(2, 10))
        assert consumer.poll(timeout_s=0.05) == []
        with pytest.raises(BusError):
            consumer.seek(TopicPartition(topic, 0), 0)


def test_offsets_for_time(bus, new_topic):
    topic = new_topic(2)
    with bus.producer() as producer:
        for i in range(10):
            producer.send(topic, b"x", partition=0, timestamp_ms=1000 * (i + 1))
        producer.flush()
        for i in range(3):  # a second batch, out of time order
            producer.send(topic, b"y", partition=0, timestamp_ms=[20_000, 500, 30_000][i])
    assert bus.offsets_for_time(topic, 0) == {0: 0, 1: 0}
    assert bus.offsets_for_time(topic, 3500) == {0: 3, 1: 0}
    assert bus.offsets_for_time(topic, 10_000) == {0: 9, 1: 0}
    assert bus.offsets_for_time(topic, 10_001) == {0: 10, 1: 0}
    assert bus.offsets_for_time(topic, 25_000) == {0: 12, 1: 0}
    assert bus.offsets_for_time(topic, 99_999) == {0: 13, 1: 0}  # none that late: the end


def test_auto_offset_reset_latest_skips_the_backlog(bus, new_topic, group, drain):
    topic = new_topic(2)
    produce(bus, topic, 5)
    with bus.consumer(group, [topic], auto_offset_reset="latest") as consumer:
        assert consumer.poll(timeout_s=0.05) == []
        assert {tp: consumer.position(tp) for tp in consumer.assignment()} == {
            TopicPartition(topic, p): end for p, end in bus.end_offsets(topic).items()
        }
        with bus.producer() as producer:
            for value in (b"new-1", b"new-2", b"new-3"):
                producer.send(topic, value, b"one-key")
        assert [r.value for r in drain(consumer, 3)] == [b"new-1", b"new-2", b"new-3"]


def test_auto_offset_reset_is_validated(bus, new_topic, group):
    with pytest.raises(ValueError):
        bus.consumer(group, [new_topic()], auto_offset_reset="middle")


# -- consumers without a group ------------------------------------------------------------------
def test_consumer_without_group_reads_what_it_assigns_and_cannot_commit(bus, new_topic, drain):
    topic = new_topic(2)
    values = produce(bus, topic, 20)
    with bus.consumer(None) as consumer:
        assert consumer.assignment() == frozenset()
        assert consumer.poll() == []
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        records = drain(consumer, 20)
        assert sorted(r.value for r in records) == sorted(values)
        assert consumer.committed(TopicPartition(topic, 0)) is None
        with pytest.raises(BusError):
            consumer.commit()


def test_group_consumer_cannot_assign(bus, new_topic, group):
    topic = new_topic(1)
    with bus.consumer(group, [topic]) as consumer, pytest.raises(BusError):
        consumer.assign([TopicPartition(topic, 0)])


# -- topics -------------------------------------------------------------------------------------
def test_create_topic_is_idempotent(bus, new_topic):
    name = new_topic(3)
    info = bus.create_topic(name, 8, retention_ms=1000)
    assert (info.name, info.partitions, info.retention_ms) == (name, 3, None)
    created = bus.create_topic(name + "-kept", 2, retention_ms=86_400_000)
    assert (created.partitions, created.retention_ms) == (2, 86_400_000)
    topics = bus.topics()
    assert topics[name].partitions == 3
    assert topics[name + "-kept"] == created
    assert bus.topic(name) == info
    with pytest.raises(ValueError):
        bus.create_topic(name + "-empty", 0)


def test_closed_consumer_refuses_to_poll(bus, new_topic, group):
    consumer = bus.consumer(group, [new_topic()])
    consumer.close()
    with pytest.raises(BusError):
        consumer.poll()
