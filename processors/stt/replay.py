"""Audio a streaming recogniser has not confirmed yet, kept to send again after a reconnect.

A cloud session can drop mid-utterance (it expired, the server restarted, the network blinked). The
words of the turn in progress are then lost on the server's side; sending that turn's audio to the
new session recovers them. So every chunk is kept until a final transcript covers it, within a bound
(old audio is dropped first), and audio that arrives while there is no session waits here too.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("processors.stt.replay")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of PCM and where it starts in the stream, in seconds."""

    start: float
    pcm: bytes


class Chunker:
    """Regroups PCM into chunks of one fixed size: providers want 50 ms, frames come in 10-30 ms."""

    def __init__(self, chunk_bytes: int) -> None:
        if chunk_bytes < 2 or chunk_bytes % 2:
            raise ValueError(f"chunk_bytes must be a positive even number, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes  # size of every chunk but a padded tail
        self._pending = bytearray()

    def feed(self, pcm: bytes) -> list[bytes]:
        """The whole chunks ``pcm`` completes (often none)."""
        self._pending += pcm
        size = self.chunk_bytes
        count = len(self._pending) // size
        if not count:
            return []
        chunks = [bytes(self._pending[i * size : (i + 1) * size]) for i in range(count)]
        del self._pending[: count * size]
        return chunks

    def tail(self) -> bytes | None:
        """What is left, padded with silence to a whole chunk (a provider rejects short ones)."""
        if not self._pending:
            return None
        chunk = bytes(self._pending) + bytes(self.chunk_bytes - len(self._pending))
        self._pending.clear()
        return chunk

    def clear(self) -> None:
        """Forget what is pending."""
        self._pending.clear()


class ReplayBuffer:
    """Unconfirmed audio in stream order, at most ``max_seconds`` of it."""

    def __init__(self, bytes_per_second: int, max_seconds: float) -> None:
        self.bytes_per_second = bytes_per_second  # of the PCM it holds (rate * channels * 2)
        self.max_bytes = int(bytes_per_second * max_seconds)  # the bound; older audio is dropped
        self.dropped = 0.0  # seconds dropped to the bound since the last ``take_dropped``
        self._chunks: deque[Chunk] = deque()
        self._bytes = 0  # held
        self._added = 0  # ever added: stream times are counted in bytes, so they do not drift

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def position(self) -> float:
        """Stream seconds of all audio added so far."""
        return self._added / self.bytes_per_second

    @property
    def start(self) -> float:
        """Stream time of the oldest audio held (``position`` when empty)."""
        return self._chunks[0].start if self._chunks else self.position

    @property
    def seconds(self) -> float:
        """Audio held, in seconds."""
        return self._bytes / self.bytes_per_second

    def add(self, pcm: bytes) -> Chunk:
        """Keep ``pcm`` (the next audio of the stream); drops the oldest audio beyond the bound."""
        chunk = Chunk(self.position, pcm)
        self._added += len(pcm)
        self._chunks.append(chunk)
        self._bytes += len(pcm)
        while self._bytes > self.max_bytes and len(self._chunks) > 1:
            old = self._chunks.popleft()
            self._bytes -= len(old.pcm)
            self.dropped += len(old.pcm) / self.bytes_per_second
        return chunk

    def confirm(self, until: float) -> None:
        """A final transcript covers the stream up to ``until`` seconds: forget audio that ends by then."""
        while self._chunks:
            first = self._chunks[0]
            if first.start + len(first.pcm) / self.bytes_per_second > until + 1e-6:
                break
            self._chunks.popleft()
            self._bytes -= len(first.pcm)

    def chunks(self) -> list[Chunk]:
        """Everything held, oldest first."""
        return list(self._chunks)

    async def resend(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send everything held, oldest first, and then what was added meanwhile, until none is left."""
        sent_until = self.start
        while True:
            pending = [chunk for chunk in self._chunks if chunk.start >= sent_until - 1e-9]
            if not pending:
                return
            for chunk in pending:
                await send(chunk.pcm)
                sent_until = chunk.start + len(chunk.pcm) / self.bytes_per_second

    def take_dropped(self) -> float:
        """Seconds dropped to the bound since the last call (and reset the count)."""
        dropped, self.dropped = self.dropped, 0.0
        return dropped
