"""The key -> partition function must match Kafka's Java client bit for bit."""

import pytest

from tradepipe.bus import murmur2, partition_for

# Kafka's UtilsTest.testMurmur2 vectors, plus short keys that exercise each tail length.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"1": -1993445489,
    b"12": 126087238,
    b"123": -267702483,
    b"1234": -1614185708,
    b"12345": -1188365604,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items(), ids=[k.decode()[:12] for k in KAFKA_VECTORS])
def test_murmur2_matches_kafka(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_masks_sign_bit_then_takes_modulo() -> None:
    # Kafka's toPositive(h) is h & 0x7fffffff (not abs): -973932308 & 0x7fffffff == 1173551340.
    assert partition_for(b"21", 7) == 1173551340 % 7 == 3
    assert partition_for(b"foobar", 12) == (-790332482 & 0x7FFFFFFF) % 12 == 6
    assert partition_for(b"abc", 4) == 479470107 % 4 == 3


def test_partition_is_in_range_for_every_count() -> None:
    for count in (1, 2, 3, 16, 64):
        assert {partition_for(k, count) for k in KAFKA_VECTORS} <= set(range(count))
    assert partition_for(b"anything", 1) == 0
