"""``openai.api``: serve OpenAI's ``/v1`` audio and chat endpoints from the config's own engine nodes.

The node takes no frames and has no edges: it is a declaration read by the server
(``transports.dropin.openai``), naming which node answers each endpoint and the limits on requests.
Each named node keeps its type's params (model, voice, threads): the server builds one instance of it
for the routes, whose model is the process-wide copy every conversation of the same config shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

from pipeline.errors import Problem
from pipeline.frames import Frame
from pipeline.params import param
from pipeline.processor import Processor, Source

__all__ = ["ENDPOINT_ENGINES", "OpenAIApi", "OpenAIApiParams"]

ENDPOINT_ENGINES: Mapping[str, tuple[str, str]] = {
    "transcriptions": ("transcribe", "a recogniser of whole utterances (stt.whisper)"),
    "speech": ("synthesize", "a TTS node (tts.piper)"),
    "chat": ("stream_reply", "an LLM node (llm.local)"),
}
"""Param naming an endpoint's node -> (the method such a node has, what to name)."""


@dataclass(slots=True, kw_only=True)
class OpenAIApiParams:
    """Params of ``openai.api``."""

    transcriptions: str | None = param(
        "stt", doc="node answering POST /v1/audio/transcriptions (stt.whisper); null = not served"
    )
    speech: str | None = param(
        "tts", doc="node answering POST /v1/audio/speech (tts.piper); null = not served"
    )
    chat: str | None = param(
        "llm", doc="node answering POST /v1/chat/completions (llm.local); null = not served"
    )
    voices: dict[str, str] = param(
        {},
        doc="more voices: name -> TTS node (OpenAI's own voice names all speak with `speech`'s node)",
    )
    max_waiting: int = param(
        8, ge=0, doc="requests waiting for a busy engine; one more is refused with 429 and Retry-After"
    )
    max_upload_bytes: int = param(
        26214400, ge=1024, doc="largest audio upload (OpenAI's limit: 25 MB); larger gets 413"
    )
    max_audio_seconds: float = param(1500.0, gt=0, doc="longest audio transcribed; longer gets 400")
    max_speech_chars: int = param(4096, ge=1, doc="longest speech input (OpenAI's limit); longer gets 400")
    max_chat_bytes: int = param(
        1048576, ge=1024, doc="largest chat request body; the prompt must also fit the model's context"
    )


class OpenAIApi(Source):
    """Declares the OpenAI routes; in a conversation's graph it produces nothing and ends at once."""

    type_name = "openai.api"
    Params = OpenAIApiParams
    params: OpenAIApiParams
    warm_up: ClassVar[bool] = False  # the routes start their own engines

    async def generate(self) -> AsyncIterator[Frame]:
        return
        yield  # pragma: no cover

    def endpoints(self) -> dict[str, str]:
        """Endpoint -> the node answering it, for the endpoints served."""
        p = self.params
        named = {"transcriptions": p.transcriptions, "speech": p.speech, "chat": p.chat}
        return {endpoint: node for endpoint, node in named.items() if node}

    def check_nodes(self, nodes: Mapping[str, Processor]) -> list[Problem]:
        """Each endpoint names a node of the config that can answer it (checked once all are built)."""
        problems = []
        named = [(endpoint, node) for endpoint, node in self.endpoints().items()]
        named += [("voices", node) for node in self.params.voices.values()]
        for key, node in named:
            method, kind = ENDPOINT_ENGINES["speech" if key == "voices" else key]
            processor = nodes.get(node)
            if processor is None:
                problem = f"{key} names '{node}', which is no node of this config"
                problems.append(Problem(problem, fix=f"name {kind}, or null", node=self.name, key=key))
            elif not callable(getattr(processor, method, None)):
                shown = processor.type_name or type(processor).__name__
                problem = f"{key} names '{node}' ({shown}), which cannot answer it"
                problems.append(Problem(problem, fix=f"name {kind}", node=self.name, key=key))
        return problems
