"""``tts.openai``: OpenAI's speech endpoint, streamed as raw 24 kHz PCM sentence by sentence.

::

    tts:
      type: tts.openai
      api_key: ${OPENAI_API_KEY}
      voice: alloy
      model: gpt-4o-mini-tts
      instructions: Speak warmly and briskly.    # gpt-4o-mini-tts only

``response_format: pcm`` is signed 16-bit little-endian mono at 24 kHz with no header, so bytes are
played as they arrive: the first audio leaves after the first HTTP chunk, not after the sentence.
HTTP chunks split samples anywhere, so an odd trailing byte is carried into the next chunk. A barge-in
closes the generator, which closes the response and with it the connection: the server stops.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.errors import Problem
from pipeline.params import param
from processors.llm.openai import (
    OPENAI_KEY_VARIABLE,
    OPENAI_URL,
    key_problems,
    make_openai_client,
    raise_explained,
)
from processors.tts.base import SpeechParams, SpeechSynthesizer

if TYPE_CHECKING:
    import openai

__all__ = ["PCM_RATE", "OpenAITTS", "OpenAITTSParams"]

PCM_RATE = 24000
"""The rate of ``response_format="pcm"`` (fixed by the API)."""


@dataclass(slots=True, kw_only=True)
class OpenAITTSParams(SpeechParams):
    """Voice, model and server of a ``tts.openai`` node."""

    api_key: str = param(doc="API key: write ${OPENAI_API_KEY}", secret=True)
    model: str = param("gpt-4o-mini-tts", doc="gpt-4o-mini-tts, tts-1 or tts-1-hd")
    voice: str = param(
        "alloy",
        check=lambda voice: bool(voice.strip()),
        fix="name a voice, e.g. voice: alloy",
        doc="alloy, ash, ballad, coral, echo, fable, nova, onyx, sage, shimmer, verse...",
    )
    instructions: str | None = param(None, doc="how to speak (tone, pace, accent); gpt-4o-mini-tts only")
    speed: float | None = param(None, ge=0.25, le=4.0, doc="pace; null = the voice's normal pace")
    base_url: str | None = param(None, doc="an OpenAI-compatible server; null = OpenAI")
    max_retries: int = param(
        2, ge=0, doc="retries of a failed request (connection errors, 429, 5xx) before it fails"
    )
    timeout: float = param(30.0, gt=0, doc="seconds to wait for the server to connect or send the next bytes")
    prepare_ahead: bool = param(
        False,
        doc="synthesise the first piece of a preemptive reply before the turn ends (billed even when "
        "the user goes on and it is never played)",
    )


class OpenAITTS(SpeechSynthesizer):
    """Speaks each sentence with ``audio.speech`` through the official ``openai`` SDK."""

    Params: ClassVar[type[Any]] = OpenAITTSParams
    params: OpenAITTSParams
    sample_rate = PCM_RATE

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._client: openai.AsyncOpenAI | None = None

    def check(self) -> list[Problem]:
        return key_problems(self.params.api_key, OPENAI_KEY_VARIABLE, self.name)

    async def on_start(self) -> None:
        p = self.params
        self._client = make_openai_client(p.api_key, p.base_url, p.max_retries, p.timeout)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        import openai

        assert self._client is not None, "on_start has not run"
        p = self.params
        request: dict[str, Any] = {
            "model": p.model,
            "voice": p.voice,
            "input": text,
            "response_format": "pcm",
        }
        if p.instructions:
            request["instructions"] = p.instructions
        if p.speed is not None:
            request["speed"] = p.speed
        try:
            async with (
                self._client.audio.speech.with_streaming_response.create(**request) as response,
                contextlib.aclosing(_whole_samples(response.iter_bytes(), p.base_url or OPENAI_URL)) as pcms,
            ):
                async for pcm in pcms:
                    yield pcm
        except openai.APIError as error:
            raise_explained(error, p)


async def _whole_samples(chunks: AsyncIterator[bytes], server: str) -> AsyncGenerator[bytes, None]:
    """The body's bytes cut on sample boundaries (an odd trailing byte waits for the next chunk).

    The SDK leaves errors of its HTTP client unwrapped while a body streams; they become a
    ``ConnectionError`` naming the server.
    """
    carry = b""
    try:
        async for chunk in chunks:
            data = carry + chunk
            whole = len(data) // 2 * 2
            carry = data[whole:]
            if whole:
                yield data[:whole]
    except Exception as error:
        raise ConnectionError(f"connection to {server} failed: {type(error).__name__}: {error}") from error
