"""``llm.openai``: chat replies from OpenAI, or from any server that speaks its chat-completions API.

``base_url`` points it elsewhere, so the same node drives local servers too::

    llm:
      type: llm.openai
      api_key: ${OPENAI_API_KEY}       # local servers accept any non-empty key, e.g. "local"
      model: gpt-4o-mini
      # base_url: http://localhost:11434/v1   Ollama (model: llama3.2)
      # base_url: http://localhost:8080/v1    llama.cpp's llama-server
      # base_url: http://localhost:8000/v1    vLLM

Replies stream (``stream=True``). With ``tools`` (see ``processors.llm.tools``) every request, follow-ups
included, carries their schemas; a call streams as fragments per index (the first names it, the rest
extend its JSON arguments; servers that repeat the id and name in every fragment are read alike) and is
handed to the base whole at the end of the stream, which runs it and asks again with the assistant's
``tool_calls`` message and one ``tool`` message per call (already this API's own shape). Token usage
is asked for (``stream_options.include_usage``) and counted in ``usage``. A rejected key or an
unknown model ends the graph (nothing can work); a dropped or garbled stream fails that turn only.

The helpers here (key check, client, error translation) are shared with ``stt.openai`` and
``tts.openai``; the SDK is imported only when a node starts, so ``list`` stays fast.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from pipeline.errors import FatalProcessorError, Problem
from pipeline.frames import MetricsFrame
from pipeline.params import hide_secret_params, param
from pipeline.processor import Processor, timings_of
from processors.llm.base import ChatLLM, ChatParams, ToolCall

if TYPE_CHECKING:
    import openai

__all__ = [
    "OPENAI_KEY_VARIABLE",
    "OPENAI_URL",
    "OpenAILLM",
    "OpenAILLMParams",
    "explain_openai_error",
    "key_problems",
    "make_openai_client",
    "raise_explained",
    "record_usage",
]

OPENAI_KEY_VARIABLE = "OPENAI_API_KEY"
OPENAI_URL = "https://api.openai.com/v1"


@dataclass(slots=True, kw_only=True)
class OpenAILLMParams(ChatParams):
    """Model and server of an ``llm.openai`` node."""

    api_key: str = param(doc="API key: write ${OPENAI_API_KEY}; local servers take any value", secret=True)
    model: str = param("gpt-4o-mini", doc="chat model name (for a local server: the model it serves)")
    base_url: str | None = param(
        None, doc="an OpenAI-compatible server, e.g. http://localhost:11434/v1 (Ollama); null = OpenAI"
    )
    max_retries: int = param(
        2, ge=0, doc="retries of a failed request (connection errors, 429, 5xx) before it fails"
    )
    timeout: float = param(30.0, gt=0, doc="seconds to wait for the server to connect or send the next bytes")


@dataclass(slots=True)
class _PartialCall:
    """A streamed tool call being assembled from its fragments."""

    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAILLM(ChatLLM):
    """Streams chat completions through the official ``openai`` SDK."""

    Params: ClassVar[type[Any]] = OpenAILLMParams
    params: OpenAILLMParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # totals over the session
        self._client: openai.AsyncOpenAI | None = None

    def check(self) -> list[Problem]:
        return [*super().check(), *key_problems(self.params.api_key, OPENAI_KEY_VARIABLE, self.name)]

    async def on_start(self) -> None:
        p = self.params
        self._client = make_openai_client(p.api_key, p.base_url, p.max_retries, p.timeout)

    async def on_stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        import openai

        assert self._client is not None, "on_start has not run"
        p = self.params
        request: dict[str, Any] = {
            "model": p.model,
            "messages": messages,
            "temperature": p.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # OpenAI's own models (the reasoning ones) want max_completion_tokens; compatible servers
        # know max_tokens, which OpenAI deprecated.
        request["max_tokens" if p.base_url else "max_completion_tokens"] = p.max_tokens
        if self.tool_schemas:  # on follow-ups too: the model may call again
            request["tools"] = self.tool_schemas
        calls: dict[int, _PartialCall] = {}
        try:
            stream = await self._client.chat.completions.create(**request)
        except openai.APIError as error:
            raise_explained(error, p)
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    record_usage(self, chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices[:1]:  # the usage chunk has none
                    if choice.delta.content:
                        yield choice.delta.content
                    for fragment in choice.delta.tool_calls or ():
                        _add_fragment(calls, fragment)
            for call in _finished(calls):  # whole, once the stream has ended
                yield call
        except openai.APIError as error:
            raise_explained(error, p)
        except ValueError as error:  # json.JSONDecodeError: a chunk that is not JSON
            raise ValueError(
                f"unreadable chunk in the reply stream from {p.base_url or OPENAI_URL}: {error}"
            ) from error
        finally:
            await stream.close()  # on barge-in too: the server stops generating


def _add_fragment(calls: dict[int, _PartialCall], fragment: Any) -> None:
    """Merge one streamed tool-call fragment: an id or name is assigned (some servers repeat them in
    every fragment), argument text is appended. A server that numbers no fragment starts a new call
    at each new id."""
    index = fragment.index
    if index is None:
        last = max(calls, default=-1)
        index = last + 1 if last < 0 or (fragment.id and fragment.id != calls[last].call_id) else last
    call = calls.setdefault(index, _PartialCall())
    call.call_id = fragment.id or call.call_id
    if fragment.function is not None:
        call.name = fragment.function.name or call.name
        if fragment.function.arguments:
            call.arguments.append(fragment.function.arguments)


def _finished(calls: dict[int, _PartialCall]) -> list[ToolCall]:
    """The assembled calls in index order; a call the server gave no id gets a unique one."""
    return [
        ToolCall(
            call_id=c.call_id or f"call_{uuid.uuid4().hex[:24]}",
            name=c.name,
            arguments="".join(c.arguments) or "{}",
        )
        for _, c in sorted(calls.items())
    ]


# --- shared by the OpenAI nodes ------------------------------------------------------------------


def key_problems(api_key: str, variable: str, node: str) -> list[Problem]:
    """A problem when the key is empty: ``${VAR}`` of an unset or empty variable substitutes nothing."""
    if api_key.strip():
        return []
    return [
        Problem(
            f"api_key is empty: is {variable} set?",
            fix=f"export {variable}=... and write 'api_key: ${{{variable}}}'",
            key="api_key",
            node=node,
        )
    ]


def make_openai_client(
    api_key: str, base_url: str | None, max_retries: int, timeout: float
) -> openai.AsyncOpenAI:
    """The async SDK client (imported here, not at module level: it takes a second to import)."""
    import openai

    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout)


def explain_openai_error(error: Exception, params: Any) -> Exception:
    """The error to raise for an SDK error: configuration mistakes end the graph with a clear message.

    ``params`` (with ``model`` and ``base_url``) names the server; its secrets are masked in the text,
    and a fatal error is raised ``from None`` so no traceback shows the SDK's unmasked message.
    """
    import openai

    server = params.base_url or OPENAI_URL
    said = hide_secret_params(_message(error), params)
    if isinstance(error, openai.AuthenticationError):
        return FatalProcessorError(
            f"{server} rejected the API key (HTTP 401): check {OPENAI_KEY_VARIABLE} ({said})"
        )
    if isinstance(error, openai.PermissionDeniedError):
        return FatalProcessorError(f"{server} refused access (HTTP 403): {said}")
    if isinstance(error, openai.NotFoundError):
        return FatalProcessorError(f"{server}: model '{params.model}' not found (HTTP 404): {said}")
    if isinstance(error, openai.APIConnectionError) and not isinstance(error, openai.APITimeoutError):
        cause = f": {error.__cause__}" if error.__cause__ else ""
        return openai.APIConnectionError(
            message=f"connection to {server} failed{cause}", request=error.request
        )
    return error


def raise_explained(error: Exception, params: Any) -> NoReturn:
    """Raise ``explain_openai_error(error, params)``: fatal ones without the SDK's error attached."""
    explained = explain_openai_error(error, params)
    if isinstance(explained, FatalProcessorError):
        raise explained from None
    if explained is error:
        raise error
    raise explained from error


def _message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(error)


def record_usage(processor: Processor, prompt_tokens: int | None, completion_tokens: int | None) -> None:
    """Add one reply's token counts to ``processor.usage``; also as metrics frames when those are on.

    Counts are not durations, so they stay out of ``metrics.record`` (its summary is in milliseconds).
    """
    counts = {"prompt_tokens": prompt_tokens or 0, "completion_tokens": completion_tokens or 0}
    usage: dict[str, int] = processor.usage  # type: ignore[attr-defined]
    for metric, value in counts.items():
        usage[metric] += value
        if timings_of(processor).emit_frames:
            processor.push_system(MetricsFrame(processor=processor.name, metric=metric, value=float(value)))
