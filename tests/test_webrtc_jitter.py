"""The Opus jitter buffer: no delay without loss, a bounded wait for a missing packet, and back to no
delay right after it (the waiting packets merged into one Opus packet that decodes to all their audio)."""

from __future__ import annotations

import random
from fractions import Fraction
from typing import cast

import av
import numpy as np
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterBuffer

from transports.webrtc.jitter import OpusJitterBuffer, merge_opus


class Packet:
    """What the receiver hands a jitter buffer: sequence number, timestamp, payload in ``_data``."""

    def __init__(self, sequence: int, data: bytes) -> None:
        self.sequence_number = sequence & 0xFFFF
        self.timestamp = (sequence * 960) & 0xFFFFFFFF
        self._data = data


def opus_packets(count: int) -> list[bytes]:
    """``count`` 20 ms Opus packets of a 440 Hz tone, as a browser sends them."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.bit_rate, encoder.sample_rate = 32000, 48000
    encoder.format, encoder.layout = "s16", "stereo"
    encoder.time_base = Fraction(1, 48000)
    packets: list[bytes] = []
    t = np.arange(960 * (count + 10)) / 48000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    for index in range(count + 10):
        chunk = np.repeat(tone[index * 960 : (index + 1) * 960], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, index * 960
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets[:count]


def released(buffer: object, arrivals: list[int], packets: list[bytes]) -> list[tuple[int, int]]:
    """(arrival index, timestamp of the frame released then) for each arrival that released one."""
    out = []
    for index, sequence in enumerate(arrivals):
        _, frame = buffer.add(Packet(sequence, packets[sequence % len(packets)]))  # type: ignore[attr-defined]
        if frame is not None:
            out.append((index, frame.timestamp))
    return out


def test_every_packet_is_released_as_it_arrives_where_stock_aiortc_waits_for_four_more() -> None:
    packets = opus_packets(20)
    arrivals = list(range(20))
    ours = released(OpusJitterBuffer(), arrivals, packets)
    assert ours == [(i, i * 960) for i in range(20)]
    stock = released(JitterBuffer(capacity=16, prefetch=4), arrivals, packets)
    assert stock[0][0] == 4  # the first frame comes out with the fifth packet: ~80 ms late


def test_after_a_loss_the_waiting_packets_come_out_together_and_decode_to_all_their_audio() -> None:
    packets = opus_packets(30)
    arrivals = [s for s in range(30) if s != 10]
    buffer = OpusJitterBuffer(max_wait=3)
    decoder = OpusDecoder()
    samples_after = {}
    for index, sequence in enumerate(arrivals):
        _, frame = buffer.add(Packet(sequence, packets[sequence]))
        if frame is not None:
            samples_after[index] = sum(cast(av.AudioFrame, f).samples for f in decoder.decode(frame))
    assert buffer.lost == 1
    # 11 and 12 wait; 13 makes three: 11-13 come out as one packet of 60 ms, and nothing waits after
    assert samples_after[12] == 3 * 960
    assert all(samples_after[i] == 960 for i in range(13, len(arrivals)))
    assert buffer.waiting == 0
    assert sum(samples_after.values()) == 29 * 960


def test_stock_aiortc_stays_behind_after_one_loss_and_ours_does_not() -> None:
    packets = opus_packets(100)
    arrivals = [s for s in range(100) if s != 20]
    stock = released(JitterBuffer(capacity=16, prefetch=4), arrivals, packets)
    ours = released(OpusJitterBuffer(), arrivals, packets)
    lag = {name: arrivals[got[-1][0]] - got[-1][1] // 960 for name, got in (("stock", stock), ("ours", ours))}
    assert lag["ours"] == 0
    assert lag["stock"] >= 10  # packets received but not yet released, for the rest of the call


def test_late_duplicated_and_reordered_packets() -> None:
    packets = opus_packets(12)
    buffer = OpusJitterBuffer(max_wait=3)
    got = released(buffer, [0, 1, 3, 2, 4, 4, 1, 5], packets)
    assert [ts // 960 for _, ts in got] == [0, 1, 2, 4, 5]  # 2 arrived in time: 2 and 3 merged
    assert buffer.late == 2


def test_a_sequence_restart_or_wrap_is_followed() -> None:
    packets = opus_packets(8)
    buffer = OpusJitterBuffer()
    got = released(buffer, [65534, 65535, 0, 1, 30000, 30001], packets)
    assert len(got) == 6


def test_merge_keeps_packets_it_cannot_join_apart() -> None:
    packets = opus_packets(8)
    merged, taken = merge_opus(packets[:3])
    assert taken == 3 and merged[0] & 0x3 == 3 and merged[1] == 0x80 | 3
    other = bytes([packets[1][0] ^ 0x08]) + packets[1][1:]  # another configuration
    assert merge_opus([packets[0], other])[1] == 1
    assert merge_opus(packets[:7])[1] == 6  # 120 ms at most


def test_random_loss_and_reordering_never_lose_more_than_was_dropped() -> None:
    rng = random.Random(7)
    packets = opus_packets(50)
    arrivals = [s for s in range(400) if rng.random() > 0.05]
    for i in range(0, len(arrivals) - 1, 17):
        arrivals[i], arrivals[i + 1] = arrivals[i + 1], arrivals[i]
    buffer, decoder = OpusJitterBuffer(), OpusDecoder()
    decoded = 0
    for sequence in arrivals:
        _, frame = buffer.add(Packet(sequence, packets[sequence % 50]))
        if frame is not None:
            decoded += sum(cast(av.AudioFrame, f).samples for f in decoder.decode(frame))
    assert decoded + (buffer.waiting + buffer.late) * 960 >= len(set(arrivals)) * 960 - 3 * 960
    assert buffer.waiting < 3
