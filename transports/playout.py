"""Playout: what every transport that plays the bot's voice does the same way.

It paces bot audio at wall-clock speed, so an interruption finds little audio already sent and the
bot falls silent within one frame plus ``lead``; it tells the rest of the graph when the bot starts
and stops speaking (system frames, upstream); and when the audio of a ``TTSTextFrame`` starts playing
it sends that text upstream as a ``SpokenTextFrame``, so the conversation remembers what was heard.

A transport owns one ``Playout`` and calls ``text``, ``audio``, ``finished`` and ``interrupted`` from
its own ``process`` / ``on_interrupt``; the writing itself (a socket, a file, a sound card) stays the
transport's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

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


class Playout:
    """Paces bot audio and reports speaking state and spoken text for ``owner``.

    ``realtime=False`` writes audio as fast as it comes (files, tests); ``lead`` is how far ahead of
    the playback clock audio may be written (a client-side jitter buffer).
    """

    def __init__(self, owner: Processor, realtime: bool = True, lead: float = 0.06) -> None:
        self.owner = owner
        self.realtime = realtime
        self.lead = lead
        self.speaking = False
        self.played = 0.0  # seconds of bot audio written since the start
        self._due = 0.0  # monotonic time at which the audio written so far has finished playing
        self._pending_text: list[str] = []

    async def text(self, frame: TTSTextFrame) -> None:
        """Remember the text that the next audio speaks."""
        if frame.text.strip():
            self._pending_text.append(frame.text)

    async def audio(self, frame: AudioFrame, write: Callable[[AudioFrame], Awaitable[None]]) -> None:
        """Write ``frame`` with ``write``, reporting the start of speech and text, then pace."""
        if not self.speaking:
            self.speaking = True
            self.owner.push_system(BotStartedSpeakingFrame(), UPSTREAM)
        if self._pending_text:
            spoken, self._pending_text = " ".join(self._pending_text), []
            await self.owner.push(SpokenTextFrame(text=spoken), UPSTREAM)
        await write(frame)
        self.played += frame.duration
        if not self.realtime:
            return
        now = asyncio.get_running_loop().time()
        self._due = max(self._due, now) + frame.duration
        ahead = self._due - now - self.lead
        if ahead > 0:
            await asyncio.sleep(ahead)

    async def finished(self) -> None:
        """The reply's audio is all written: wait until it has played, then report the bot silent."""
        if self._pending_text:  # text with no audio (e.g. punctuation only) was still "said"
            spoken, self._pending_text = " ".join(self._pending_text), []
            await self.owner.push(SpokenTextFrame(text=spoken), UPSTREAM)
        if self.realtime:
            remaining = self._due - asyncio.get_running_loop().time()
            if remaining > 0:
                await asyncio.sleep(remaining)
        self._stop_speaking()

    def interrupted(self) -> None:
        """Barge-in: forget the schedule and unsaid text, and report the bot silent at once."""
        self._pending_text.clear()
        self._due = 0.0
        self._stop_speaking()

    def _stop_speaking(self) -> None:
        if self.speaking:
            self.speaking = False
            self.owner.push_system(BotStoppedSpeakingFrame(), UPSTREAM)
