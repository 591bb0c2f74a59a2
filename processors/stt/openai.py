"""``stt.openai``: OpenAI's transcription endpoint, one request per utterance the VAD cut.

::

    stt:
      type: stt.openai
      api_key: ${OPENAI_API_KEY}
      model: gpt-4o-mini-transcribe     # or whisper-1, gpt-4o-transcribe
      language: en

Each utterance is sent as a WAV file made in memory. The ``gpt-*-transcribe`` models stream their
result (``stream: auto``): each delta updates an ``InterimTranscriptFrame`` while the rest is still
being recognised, and the final text becomes the ``TranscriptFrame``. ``whisper-1`` cannot stream; the
API would ignore the request, so ``stream: true`` with it is refused. ``base_url`` reaches any server
with the same endpoint (a local faster-whisper server, say), usually without streaming.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pipeline.errors import Problem
from pipeline.frames import InterimTranscriptFrame
from pipeline.params import param
from pipeline.utterances import Utterance
from processors.llm.openai import (
    OPENAI_KEY_VARIABLE,
    OPENAI_URL,
    key_problems,
    make_openai_client,
    raise_explained,
)
from processors.stt.segmented import Transcription, UtteranceParams, UtteranceSTT

if TYPE_CHECKING:
    import openai

__all__ = ["OpenAISTT", "OpenAISTTParams", "streams"]


@dataclass(slots=True, kw_only=True)
class OpenAISTTParams(UtteranceParams):
    """Model, language and server of an ``stt.openai`` node."""

    api_key: str = param(doc="API key: write ${OPENAI_API_KEY}", secret=True)
    model: str = param("whisper-1", doc="whisper-1, gpt-4o-transcribe or gpt-4o-mini-transcribe")
    language: str | None = param(None, doc="ISO-639-1 code of the speech (en, de...); null = detect")
    prompt: str | None = param(None, doc="text that guides spelling and style (names, jargon)")
    stream: bool | Literal["auto"] = param(
        "auto", doc="stream interim text while recognising; auto = for the gpt-*-transcribe models"
    )
    base_url: str | None = param(None, doc="an OpenAI-compatible server; null = OpenAI")
    max_retries: int = param(
        2, ge=0, doc="retries of a failed request (connection errors, 429, 5xx) before it fails"
    )
    timeout: float = param(30.0, gt=0, doc="seconds to wait for the server to connect or send the next bytes")


def streams(model: str, setting: bool | str) -> bool:
    """Whether a request for ``model`` streams: ``auto`` means the gpt-*-transcribe family."""
    if setting == "auto":
        return model.startswith("gpt-") and "transcribe" in model
    return bool(setting)


class OpenAISTT(UtteranceSTT):
    """Transcribes each utterance with ``audio.transcriptions.create``."""

    Params: ClassVar[type[Any]] = OpenAISTTParams
    params: OpenAISTTParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.stream = streams(self.params.model, self.params.stream)
        self._client: openai.AsyncOpenAI | None = None

    def check(self) -> list[Problem]:
        p = self.params
        problems = key_problems(p.api_key, OPENAI_KEY_VARIABLE, self.name)
        if p.stream is True and p.model == "whisper-1":
            fix = "use stream: false (or auto), or a streaming model such as gpt-4o-mini-transcribe"
            problems.append(Problem("whisper-1 cannot stream", fix=fix, key="stream", node=self.name))
        return problems

    async def on_start(self) -> None:
        p = self.params
        self._client = make_openai_client(p.api_key, p.base_url, p.max_retries, p.timeout)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def transcribe(self, utterance: Utterance) -> Transcription:
        import openai

        assert self._client is not None, "on_start has not run"
        p = self.params
        request: dict[str, Any] = {
            "model": p.model,
            "file": ("utterance.wav", _wav(utterance), "audio/wav"),
            "response_format": "json",
        }
        if p.language:
            request["language"] = p.language
        if p.prompt:
            request["prompt"] = p.prompt
        try:
            if self.stream:
                text = await self._streamed(request)
            else:
                text = (await self._client.audio.transcriptions.create(**request)).text
        except openai.APIError as error:
            raise_explained(error, p)
        except ValueError as error:  # json.JSONDecodeError: an event that is not JSON
            where = p.base_url or OPENAI_URL
            raise ValueError(f"unreadable event in the transcription stream from {where}: {error}") from error
        return Transcription(text=text, language=p.language)

    async def _streamed(self, request: dict[str, Any]) -> str:
        """The final text; each delta meanwhile updates an interim transcript."""
        assert self._client is not None
        stream = await self._client.audio.transcriptions.create(**request, stream=True)
        heard, final = "", None
        try:
            async for event in stream:
                if event.type == "transcript.text.delta":
                    heard += event.delta
                    if heard.strip():
                        await self.push(
                            InterimTranscriptFrame(text=heard.strip(), language=self.params.language)
                        )
                elif event.type == "transcript.text.done":
                    final = event.text
        finally:
            await stream.close()
        return heard if final is None else final


def _wav(utterance: Utterance) -> bytes:
    """The utterance as a WAV file's bytes (the endpoint wants a file with a known format)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(utterance.channels)
        file.setsampwidth(2)
        file.setframerate(utterance.sample_rate)
        file.writeframes(utterance.pcm)
    return out.getvalue()
