"""A receive jitter buffer for Opus audio that adds no delay unless a packet is missing.

aiortc's audio receiver holds every packet until four newer ones have arrived (~80 ms), and after a
single lost packet it waits for sixteen and then releases one frame per packet received, so it stays
~280 ms behind for the rest of the call. Each RTP packet of an Opus stream is a whole frame, so a
buffer can do much better:

* the expected packet is released as soon as it arrives;
* while it is missing, newer packets wait, up to ``max_wait`` of them (reordering tolerance);
  then the missing one is given up and the waiting ones are released;
* the receiver decodes one released frame per packet received, so several waiting packets are
  released together as one Opus packet of several frames (RFC 6716 §3.2.5, code 3): the buffer is
  empty again at once, and latency recovers after every loss;
* packets older than the expected one (late or duplicated) are dropped.

``use_opus_jitter_buffer`` installs it for every audio receiver aiortc creates from then on (video keeps
aiortc's own). It reaches into aiortc's receiver, so the extra pins aiortc's version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["OpusJitterBuffer", "merge_opus", "opus_frame_ms", "use_opus_jitter_buffer"]

MAX_PACKET_MS = 120.0
"""Longest audio one Opus packet may carry."""
MAX_FRAMES = 48
"""Most frames one Opus packet may carry."""
RESTART_GAP = 3000
"""Sequence numbers ahead (60 s of 20 ms packets) taken as a new stream, not as a loss."""
LATE_WINDOW = 100
"""Sequence numbers behind the expected one taken as late; further behind, as a new stream."""


def opus_frame_ms(toc: int) -> float:
    """Duration of each frame of an Opus packet, from its TOC byte (RFC 6716 §3.1)."""
    config = toc >> 3
    if config < 12:  # SILK
        return (10.0, 20.0, 40.0, 60.0)[config % 4]
    if config < 16:  # hybrid
        return (10.0, 20.0)[config % 2]
    return (2.5, 5.0, 10.0, 20.0)[config % 4]  # CELT


def merge_opus(packets: list[bytes]) -> tuple[bytes, int]:
    """The longest leading run of ``packets`` that fits one Opus packet, as one packet; and its length.

    Only single-frame packets (code 0) with the same configuration and channel count are merged, into
    one code 3 packet with variable frame sizes, up to 120 ms; the first packet alone otherwise.
    """
    first = packets[0]
    if len(packets) == 1 or not first or first[0] & 0x3:
        return first, 1
    toc = first[0]
    frame_ms = opus_frame_ms(toc)
    run = [first]
    for packet in packets[1:]:
        if not packet or packet[0] != toc or (len(run) + 1) * frame_ms > MAX_PACKET_MS:
            break
        if len(run) + 1 > MAX_FRAMES or len(packet) - 1 > 1275:
            break
        run.append(packet)
    if len(run) == 1 or len(first) - 1 > 1275:
        return first, 1
    header = bytearray([(toc & 0xFC) | 0x3, 0x80 | len(run)])  # code 3, VBR, no padding
    for packet in run[:-1]:
        header += _frame_length(len(packet) - 1)
    return bytes(header) + b"".join(packet[1:] for packet in run), len(run)


def _frame_length(size: int) -> bytes:
    """A frame length as Opus codes it: one byte below 252, else two."""
    if size < 252:
        return bytes([size])
    low = 252 + (size & 0x3)
    return bytes([low, (size - low) >> 2])


def _ahead(sequence: int, of: int) -> int:
    """How far ``sequence`` is after ``of``, modulo 2**16: negative when before (within half the space)."""
    delta = (sequence - of) & 0xFFFF
    return delta - 0x10000 if delta >= 0x8000 else delta


class OpusJitterBuffer:
    """Drop-in for aiortc's audio ``JitterBuffer`` (see the module docstring): ``add`` a packet, get at
    most one frame to decode."""

    def __init__(self, max_wait: int = 3) -> None:
        from aiortc.jitterbuffer import JitterFrame

        self._frame = JitterFrame
        self.max_wait = max_wait  # newer packets waiting before a missing one is given up
        self.lost = 0  # packets given up
        self.late = 0  # packets dropped for arriving after their turn (or twice)
        self.merged = 0  # packets released inside another's (catching up after a loss)
        self._expected: int | None = None  # the next sequence number to release
        self._waiting: dict[int, Any] = {}  # sequence number -> packet, all after ``_expected``

    @property
    def capacity(self) -> int:
        """What aiortc's buffer reports (unused by the receiver)."""
        return self.max_wait + 1

    @property
    def waiting(self) -> int:
        """Packets held now."""
        return len(self._waiting)

    def add(self, packet: Any) -> tuple[bool, Any]:
        """Take one RTP packet (with its payload in ``_data``, as aiortc's receiver sets it); returns
        (False, a ``JitterFrame`` to decode or None): audio never asks for a picture loss indication."""
        sequence = packet.sequence_number
        if self._expected is None:
            self._expected = sequence
        ahead = _ahead(sequence, self._expected)
        if ahead < 0 and -ahead <= LATE_WINDOW:
            self.late += 1
            return False, None
        if ahead < 0 or ahead > RESTART_GAP:  # the sender restarted its sequence: start over
            self._waiting.clear()
            self._expected = sequence
        if sequence in self._waiting:
            self.late += 1
            return False, None
        self._waiting[sequence] = packet
        if self._expected not in self._waiting:
            if len(self._waiting) < self.max_wait:
                return False, None
            oldest = min(self._waiting, key=lambda s: _ahead(s, self._expected or 0))
            self.lost += _ahead(oldest, self._expected)
            self._expected = oldest
        return False, self._release()

    def _release(self) -> Any:
        """The expected packet, with the consecutive ones waiting after it merged in."""
        assert self._expected is not None
        run: list[Any] = []
        sequence = self._expected
        while sequence in self._waiting and len(run) < MAX_FRAMES:
            run.append(self._waiting[sequence])
            sequence = (sequence + 1) & 0xFFFF
        data, taken = merge_opus([bytes(p._data) for p in run])
        for packet in run[:taken]:
            del self._waiting[packet.sequence_number]
        self._expected = (self._expected + taken) & 0xFFFF
        self.merged += taken - 1
        return self._frame(data=data, timestamp=run[0].timestamp)


def use_opus_jitter_buffer(max_wait: int = 3) -> None:
    """Give every audio receiver aiortc creates from now on an ``OpusJitterBuffer`` (idempotent)."""
    from aiortc import rtcrtpreceiver

    current = getattr(rtcrtpreceiver, "JitterBuffer")  # noqa: B009 (not exported: an internal)
    stock = getattr(current, "stock", current)

    def jitter_buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> Any:
        if is_video:
            return stock(capacity=capacity, prefetch=prefetch, is_video=True)
        return OpusJitterBuffer(max_wait)

    factory: Callable[..., Any] = jitter_buffer
    factory.stock = stock  # type: ignore[attr-defined]
    setattr(rtcrtpreceiver, "JitterBuffer", factory)  # noqa: B010


def use_stock_jitter_buffer() -> None:
    """Undo ``use_opus_jitter_buffer`` (for before/after measurements)."""
    from aiortc import rtcrtpreceiver

    current = getattr(rtcrtpreceiver, "JitterBuffer")  # noqa: B009
    setattr(rtcrtpreceiver, "JitterBuffer", getattr(current, "stock", current))  # noqa: B010
