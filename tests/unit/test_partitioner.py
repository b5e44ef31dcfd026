from __future__ import annotations

import ctypes
import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from streams.kafka import murmur2, partition_for


def test_murmur2_is_aiokafkas_for_every_length_and_byte() -> None:
    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(n)) for n in range(70) for _ in range(50)]
    keys += [b"", b"\x00", b"\xff" * 9, "acc-é".encode(), b"acc-1"]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key


@pytest.mark.parametrize(
    ("key", "java"),
    [  # Utils.murmur2 in the Java client (its UtilsTest), as a signed 32-bit int
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(key: bytes, java: int) -> None:
    assert ctypes.c_int32(murmur2(key)).value == java
    assert partition_for(key, 8) == (java & 0x7FFFFFFF) % 8
