"""The audio that streaming recognisers keep for replay after a reconnect, and their chunking."""

from __future__ import annotations

import pytest

from processors.stt.replay import Chunk, Chunker, ReplayBuffer

BYTES_PER_SECOND = 32000  # 16 kHz mono s16le
MS = BYTES_PER_SECOND // 1000


def test_chunker_regroups_20_ms_frames_into_50_ms_chunks() -> None:
    chunker = Chunker(50 * MS)
    out = [chunk for i in range(6) for chunk in chunker.feed(bytes([i]) * 20 * MS)]
    assert [len(c) for c in out] == [50 * MS, 50 * MS]
    assert out[0] == bytes([0]) * 20 * MS + bytes([1]) * 20 * MS + bytes([2]) * 10 * MS  # order kept
    tail = chunker.tail()
    assert tail == bytes([5]) * 20 * MS + bytes(30 * MS)  # 20 ms left, padded with silence
    assert chunker.tail() is None


def test_chunker_refuses_odd_sizes() -> None:
    with pytest.raises(ValueError, match="even"):
        Chunker(801)


def test_replay_buffer_keeps_stream_times_and_forgets_confirmed_audio() -> None:
    buffer = ReplayBuffer(BYTES_PER_SECOND, max_seconds=10)
    chunks = [buffer.add(bytes(50 * MS)) for _ in range(4)]
    assert [c.start for c in chunks] == [0.0, 0.05, 0.1, 0.15]
    assert buffer.position == pytest.approx(0.2)
    buffer.confirm(0.12)  # a final covers the stream up to 120 ms: chunks ending by then go
    assert [c.start for c in buffer.chunks()] == [0.1, 0.15] and buffer.start == 0.1
    buffer.confirm(1.0)
    assert not buffer.chunks() and buffer.start == pytest.approx(0.2)


def test_replay_buffer_is_bounded_and_drops_the_oldest_first() -> None:
    buffer = ReplayBuffer(BYTES_PER_SECOND, max_seconds=0.1)
    for _ in range(5):
        buffer.add(bytes(50 * MS))
    assert buffer.seconds == pytest.approx(0.1)
    assert [c.start for c in buffer.chunks()] == [0.15, 0.2]
    assert buffer.take_dropped() == pytest.approx(0.15) and buffer.take_dropped() == 0.0
    assert buffer.chunks()[0] == Chunk(0.15, bytes(50 * MS))
