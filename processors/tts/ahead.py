"""The first piece of a reply synthesised before its turn has ended, kept until it is known to be wanted.

With a preemptive reply (``turn.taking``'s ``preemptive_reply``) the LLM prepares the answer during the
user's pause and announces its text so far in ``TentativeReplyFrame``s. The TTS cuts that text as it
would cut the reply and synthesises the first piece at once, in the background; when the turn ends
and the reply's first piece is the same text, its audio is already made. Anything else (other words,
a withdrawal, a barge-in) cancels it unheard.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from processors.llm.streams import closing_stream

__all__ = ["PieceAhead"]

CANCEL_TIMEOUT = 5.0
"""Seconds a cancelled synthesis gets to close its engine stream."""


class PieceAhead:
    """One piece of text being synthesised in the background; its PCM chunks once done."""

    def __init__(self, text: str, synthesize: Callable[[str], AsyncIterator[bytes]]) -> None:
        self.text = text
        self._task = asyncio.get_running_loop().create_task(self._collect(synthesize(text)), name="tts-ahead")

    @staticmethod
    async def _collect(stream: AsyncIterator[bytes]) -> list[bytes]:
        chunks: list[bytes] = []
        async with closing_stream(stream) as pcm:
            async for chunk in pcm:
                chunks.append(chunk)
        return chunks

    async def audio(self) -> list[bytes] | None:
        """The piece's PCM chunks (waiting for the synthesis to finish), or None if it failed.
        A barge-in that cancels the caller cancels the synthesis with it."""
        try:
            return await self._task
        except Exception:  # the reply synthesises it again, and reports the error if it recurs
            return None

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=CANCEL_TIMEOUT)
