"""Closing an engine's reply stream: shared by the LLM and TTS bases, which both stream from engines."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

__all__ = ["closing_stream"]

T = TypeVar("T")


@contextlib.asynccontextmanager
async def closing_stream(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an engine's stream on exit, cancelled or not, so it stops its work in a ``finally``.

    Not ``contextlib.aclosing``: the hooks promise only an ``AsyncIterator``, which need not have
    ``aclose`` (an engine may return an SDK's iterator); such a stream is left as it is.
    """
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
