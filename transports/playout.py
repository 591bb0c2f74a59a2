"""Playout: what every transport that plays the bot's voice does the same way.

Bot audio arrives much faster than it plays (TTS runs at a fraction of real time). If the sink
waited for playback inside ``process``, its inbox would fill, and since the user's audio flows
through the same chain, backpressure would hold the user's audio — and with it the VAD's
"user started speaking" — behind seconds of bot audio: barge-in would come seconds late. So a
transport only *queues* bot audio here and returns at once; a writer task plays the queue:

* it paces audio at wall-clock speed (``realtime``), writing at most ``lead`` ahead of playback, so
  an interruption finds little audio already sent and the bot falls silent within ~one frame;
* it tells the graph when the bot starts and stops speaking (system frames, upstream);
* when the audio of a ``TTSTextFrame`` starts playing, it sends that text upstream as a
  ``SpokenTextFrame``, so the conversation remembers what the user actually heard; text no audio
  followed (a sentence TTS failed to speak) is never reported.

The queue holds at most ``max_buffer`` seconds of audio (then ``audio`` waits): bounded, but long
enough for any reply. A transport calls ``text``, ``audio``, ``finished`` and ``interrupted`` from its
own ``process`` / ``on_interrupt``, and ``close`` from ``on_stop``; the writing itself (a socket, a
file, a sound card) stays the transport's.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    SpokenTextFrame,
    TTSTextFrame,
)
from pipeline.processor import Processor

__all__ = ["Playout"]

Write = Callable[[AudioFrame], Awaitable[None]]
Done = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class _Audio:
    frame: AudioFrame
    write: Write


@dataclass(slots=True)
class _Text:
    text: str


@dataclass(slots=True)
class _End:
    done: Done | None


class Playout:
    """Queues bot audio for ``owner`` and plays it from a writer task (see the module docstring).

    ``realtime=False`` writes as fast as ``write`` returns (files, tests, a device that paces itself).
    """

    def __init__(
        self, owner: Processor, realtime: bool = True, lead: float = 0.06, max_buffer: float = 120.0
    ) -> None:
        self._owner = weakref.ref(owner)  # weak: the owner holds us, and a cycle would outlive its graph
        self.realtime = realtime
        self.lead = lead
        self.max_buffer = max_buffer
        self.speaking = False
        self.played = 0.0  # seconds of bot audio written since the start
        self._queue: deque[_Audio | _Text | _End] = deque()
        self._queued = 0.0  # seconds of audio in the queue
        self._due = 0.0  # loop time at which the audio written so far has finished playing
        self._pending_text: list[str] = []
        self._writer: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # something was queued, or the queue shrank

    @property
    def owner(self) -> Processor:
        """The transport whose bot audio this plays."""
        owner = self._owner()
        if owner is None:
            raise ReferenceError("the transport of this playout no longer exists")
        return owner

    @property
    def buffered(self) -> float:
        """Seconds of bot audio queued and not yet written."""
        return self._queued

    async def text(self, frame: TTSTextFrame) -> None:
        """The next audio speaks ``frame.text``: report it when that audio starts playing."""
        if frame.text.strip():
            self._put(_Text(frame.text))

    async def audio(self, frame: AudioFrame, write: Write) -> None:
        """Queue ``frame`` to be played with ``write``; waits only while ``max_buffer`` is full."""
        while self._queued >= self.max_buffer:
            self._changed.clear()
            await self._changed.wait()
        self._queued += frame.duration
        self._put(_Audio(frame, write))

    async def finished(self, done: Done | None = None) -> None:
        """The reply's audio is all queued: once it has played, report the bot silent, then ``done()``."""
        self._put(_End(done))

    def interrupted(self) -> None:
        """Barge-in: drop everything queued, stop writing at once, report the bot silent."""
        self._queue.clear()
        self._queued = 0.0
        self._pending_text.clear()
        self._due = 0.0
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        self._writer = None
        self._changed.set()
        self._stop_speaking()

    async def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the writer: first let the queue play out (``drain``), for at most ``timeout`` seconds."""
        writer = self._writer
        if writer is not None and not writer.done():
            if drain:
                limit = timeout if timeout is not None else self._queued + 5.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(limit):
                        while self._queue:
                            self._changed.clear()
                            await self._changed.wait()
            writer.cancel()
            await asyncio.wait({writer})
        self._writer = None
        if not drain:
            self.interrupted()

    def _put(self, item: _Audio | _Text | _End) -> None:
        self._queue.append(item)
        self._changed.set()
        if self._writer is None or self._writer.done():
            name = f"playout:{self.owner.name}"
            self._writer = asyncio.get_running_loop().create_task(self._write_queue(), name=name)

    async def _write_queue(self) -> None:
        try:
            await self._write_items()
        except Exception as error:  # a failing device or socket: reported like a failing process()
            self._queue.clear()
            self._queued = 0.0
            self._changed.set()
            self._stop_speaking()
            self.owner.report_error(error)

    async def _write_items(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while queue:
            item = queue[0]
            if isinstance(item, _Text):
                self._pending_text = [item.text]  # earlier text got no audio: nobody heard it
            elif isinstance(item, _Audio):
                await self._play(item, loop)
            else:
                if self.realtime and self._due > loop.time():
                    await asyncio.sleep(self._due - loop.time())
                if item.done is not None:
                    await item.done()
                self._pending_text.clear()  # text with no audio after it was not heard
                self._stop_speaking()
            if queue and queue[0] is item:
                queue.popleft()
            self._changed.set()

    async def _play(self, item: _Audio, loop: asyncio.AbstractEventLoop) -> None:
        if not self.speaking:
            self.speaking = True
            self.owner.push_system(BotStartedSpeakingFrame(), UPSTREAM)
        await self._report_text()
        frame = item.frame
        await item.write(frame)
        self._queued = max(0.0, self._queued - frame.duration)
        self.played += frame.duration
        if not self.realtime:
            return
        now = loop.time()
        self._due = max(self._due, now) + frame.duration
        ahead = self._due - now - self.lead
        if ahead > 0:
            await asyncio.sleep(ahead)

    async def _report_text(self) -> None:
        if self._pending_text:
            spoken, self._pending_text = " ".join(self._pending_text), []
            await self.owner.push(SpokenTextFrame(text=spoken), UPSTREAM)

    def _stop_speaking(self) -> None:
        if self.speaking:
            self.speaking = False
            self.owner.push_system(BotStoppedSpeakingFrame(), UPSTREAM)
