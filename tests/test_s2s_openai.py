"""``s2s.openai`` against the OpenAI Realtime fake, through the official SDK: real speech in, the bot's
audio played in real time by ``file.output``, the conversation kept by ``recorder``.

The graph is a live call's: driver (the user) -> agent -> recorder -> speaker. The driver sends real
speech (LibriVox, resampled to 24 kHz) and waits for what the fake or the speaker did before going on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from pipeline.conformance import check_s2s, speech_script
from pipeline.errors import FatalProcessorError
from pipeline.frames import (
    AudioFrame,
    CancelFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMToolCallFrame,
    TranscriptFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.testing import Captured
from processors.llm.tools import MAX_BACKGROUND_TOOLS, ToolCall
from processors.s2s.base import CANCELLED_KEPT, ToolCallsRequested
from processors.s2s.openai import OpenAIRealtime
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.s2s_calls import Steps, browser_turn, call, played, poll, seconds, transcript
from tests.speech import audio_frames, librivox, read_wav, silence, tone
from transports.file import FileOutput

RATE = 24000
CONFIG = Path(__file__).parent.parent / "configs" / "assistant-realtime.yaml"
QUESTION = "what is the weather in paris"
REPLY = "It is sunny in Paris today, with a light breeze."


def speech() -> list[Frame]:
    """A real spoken sentence at 24 kHz (2.3 s), then 0.8 s of silence that ends the turn."""
    samples, rate = read_wav(librivox("0880"))
    voice = soxr.resample(samples, rate, RATE).astype(np.int16)
    return audio_frames(voice, silence(0.8, RATE), rate=RATE)


def barge_in_speech() -> list[Frame]:
    """The user talks over the bot (no silence after it: no second turn)."""
    return audio_frames(tone(0.3, rate=RATE), rate=RATE)


def agent(fake: FakeOpenAIRealtime, **params: Any) -> OpenAIRealtime:
    return OpenAIRealtime(api_key="sk-test", base_url=fake.base_url, name="agent", **params)


async def converse(
    fake: FakeOpenAIRealtime,
    tmp_path: Path,
    steps: Callable[[FileOutput], Steps],
    node: OpenAIRealtime | None = None,
    **params: Any,
) -> tuple[Captured, FileOutput]:
    return await call(node or agent(fake, **params), tmp_path, steps)


async def test_a_spoken_turn_is_answered_aloud_and_recorded(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(transcripts=[QUESTION], replies=[REPLY], reply_ms=1200, speed=4)

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].responses, timeout=10.0)

        return user

    async with fake:
        captured, _ = await converse(fake, tmp_path, steps)
    captured.raise_errors()
    session = fake.sessions[0]
    update = next(m for m in session.received if m["type"] == "session.update")["session"]
    assert update["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert update["audio"]["output"]["voice"] == "marin"
    assert session.types_received().count("response.create") == 0  # the server answers by itself
    assert transcript(tmp_path) == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": REPLY},
    ]
    assert seconds(tmp_path / "heard.wav") == pytest.approx(1.2, abs=0.03)
    assert seconds(tmp_path / "recordings" / "call" / "bot.wav") >= 1.2
    user_seconds = sum(f.duration for f in speech() if isinstance(f, AudioFrame))
    assert seconds(tmp_path / "recordings" / "call" / "user.wav") == pytest.approx(user_seconds, abs=0.03)
    turns = captured.of(TranscriptFrame)
    assert [t.text for t in turns] == [QUESTION]


async def test_a_transcript_later_than_the_answer_is_still_recorded_before_it(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(transcripts=[QUESTION], replies=[REPLY], reply_ms=300, speed=8)
    fake.transcript_delay = 0.8  # the answer is done before the user's words are transcribed

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(
                lambda: (
                    "conversation.item.input_audio_transcription.completed" in fake.sessions[0].types_sent()
                ),
                timeout=10.0,
            )

        return user

    async with fake:
        captured, _ = await converse(fake, tmp_path, steps)
    captured.raise_errors()
    sent = fake.sessions[0].types_sent()
    assert sent.index("response.done") < sent.index("conversation.item.input_audio_transcription.completed")
    assert transcript(tmp_path) == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": REPLY},
    ]


async def test_a_barge_in_cancels_and_truncates_at_what_was_heard(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(replies=[REPLY], reply_ms=6000, speed=2)  # streams for 3 s

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await poll(lambda: played(speaker) >= 1.0)  # the user hears a second of the answer
            for frame in barge_in_speech():
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].truncates, timeout=5.0)

        return user

    async with fake:
        captured, _ = await converse(fake, tmp_path, steps)
    captured.raise_errors()
    session = fake.sessions[0]
    assert len(captured.of(InterruptionFrame)) == 1
    assert session.cancels, "the response was still streaming: the node cancels it"
    [truncate] = session.truncates
    heard_ms = 1000 * seconds(tmp_path / "heard.wav")
    assert truncate["content_index"] == 0 and truncate["item_id"] in session.items
    assert session.items[truncate["item_id"]]["role"] == "assistant"
    assert abs(truncate["audio_end_ms"] - heard_ms) < 150, (truncate, heard_ms)
    errors = [m["error"] for m in session.sent if m["type"] == "error"]
    assert all(e["code"] == "response_cancel_not_active" for e in errors)  # crossed the server's own
    [user, bot] = transcript(tmp_path)
    assert user["role"] == "user" and bot["type"] == "interrupted"
    assert REPLY.startswith(bot["content"].rstrip()) and len(bot["content"]) < len(REPLY)


async def test_a_tool_call_runs_and_the_answer_speaks_its_result(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(
        replies=["Here you go."], reply_ms=600, speed=8, tool_arguments='{"city": "Paris"}'
    )

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: len(fake.sessions[0].responses) >= 2, timeout=10.0)

        return user

    async with fake:
        captured, _ = await converse(
            fake, tmp_path, steps, tools=[{"get_weather": "tests.tools_example:get_weather"}]
        )
    captured.raise_errors()
    session = fake.sessions[0]
    update = next(m for m in session.received if m["type"] == "session.update")["session"]
    assert [t["name"] for t in update["tools"]] == ["get_weather"] and "function" not in update["tools"][0]
    [output] = session.tool_outputs
    assert json.loads(output["output"])["city"] == "Paris"
    kinds = session.types_received()
    assert kinds.index("conversation.item.create") < kinds.index("response.create")
    [call] = captured.of(LLMToolCallFrame)
    assert call.name == "get_weather"
    assert len(captured.of(LLMResponseEndFrame)) == 1  # the call and the answer are one reply
    [_, bot] = transcript(tmp_path)
    assert bot["content"].startswith("Here you go. The tool said:") and "Paris" in bot["content"]


async def test_a_barge_in_during_a_tool_cancels_it_and_answers_the_call_as_cancelled(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(reply_ms=600, speed=8, tool_arguments='{"query": "news", "seconds": 5}')

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].responses, timeout=10.0)  # the call
            for frame in barge_in_speech():  # while the search runs
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].tool_outputs, timeout=5.0)

        return user

    tools = [{"name": "slow_search", "function": "tests.tools_example:slow_search"}]
    async with fake:
        captured, _ = await converse(fake, tmp_path, steps, tools=tools)
    captured.raise_errors()
    session = fake.sessions[0]
    [output] = session.tool_outputs
    assert json.loads(output["output"]) == {"error": "cancelled: the user interrupted"}
    assert "response.create" not in session.types_received()  # the user is speaking: no answer now
    assert len(captured.of(InterruptionFrame)) == 1


async def test_end_call_ends_the_session_after_the_goodbye(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(
        replies=["Goodbye, have a nice day."], reply_ms=500, speed=8, tool_arguments="{}"
    )

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            for frame in audio_frames(silence(20.0, RATE), rate=RATE):  # a live line stays open
                await asyncio.sleep(0.02)
                yield frame

        return user

    async with fake:
        began = asyncio.get_running_loop().time()
        captured, _ = await converse(fake, tmp_path, steps, tools=["end_call"])
        took = asyncio.get_running_loop().time() - began
    captured.raise_errors()
    assert took < 10.0, "the call ended after the goodbye, not at the end of the input"
    [call] = fake.sessions[0].responses[0]["output"]
    assert call["name"] == "end_call"
    assert [o["call_id"] for o in fake.sessions[0].tool_outputs] == [call["call_id"]]
    [_, bot] = transcript(tmp_path)
    assert bot["content"].startswith("Goodbye, have a nice day.")
    assert seconds(tmp_path / "heard.wav") == pytest.approx(0.5, abs=0.05)  # played out before the end


async def test_local_turn_detection_commits_on_our_vad(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(replies=[REPLY], reply_ms=400, speed=8)

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            frames = speech()
            yield UserStartedSpeakingFrame(stream_time=0.0)
            for frame in frames[:-30]:
                yield frame
            yield UserStoppedSpeakingFrame(stream_time=2.3)  # overtakes audio: the commit waits for it
            for frame in frames[-30:]:
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].responses, timeout=10.0)

        return user

    async with fake:
        captured, _ = await converse(fake, tmp_path, steps, turn_detection="local")
    captured.raise_errors()
    session = fake.sessions[0]
    update = next(m for m in session.received if m["type"] == "session.update")["session"]
    assert update["audio"]["input"]["turn_detection"] is None
    kinds = session.types_received()
    assert kinds.count("input_audio_buffer.commit") == 1 and kinds.count("response.create") == 1
    appended_before_commit = kinds[: kinds.index("input_audio_buffer.commit")].count(
        "input_audio_buffer.append"
    )
    assert appended_before_commit * 0.02 >= 2.3
    assert [m["role"] for m in transcript(tmp_path)] == ["user", "assistant"]


async def test_a_dropped_connection_is_a_clear_error_and_the_recording_is_intact(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(replies=[REPLY], reply_ms=600, speed=8, close_after_responses=1)

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: not fake.sessions[0].open, timeout=10.0)
            for frame in speech():  # the user goes on talking: recorded, not answered
                yield frame

        return user

    async with fake:
        captured, _ = await converse(fake, tmp_path, steps, reconnect_attempts=0)
    [error] = captured.errors
    assert "closed" in error.message and "code 1011 (internal error)" in error.message
    assert "recorded but not answered" in error.message and not error.fatal
    assert transcript(tmp_path) == [
        {"role": "user", "content": "what is the weather in paris"},
        {"role": "assistant", "content": REPLY},
    ]
    user_seconds = 2 * sum(f.duration for f in speech() if isinstance(f, AudioFrame))
    assert seconds(tmp_path / "recordings" / "call" / "user.wav") == pytest.approx(user_seconds, abs=0.03)


async def test_after_a_drop_a_new_session_goes_on_with_what_was_said_and_heard(tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(
        transcripts=[QUESTION, "and tomorrow"],
        replies=[REPLY, "Rain tomorrow."],
        reply_ms=600,
        speed=8,
        close_after_responses=1,
        close_sessions=1,
    )

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: len(fake.sessions) == 2, timeout=10.0)
            await fake.wait_until(lambda: "session.updated" in fake.sessions[1].types_sent(), timeout=10.0)
            await poll(lambda: played(speaker) >= 0.6)  # the first answer played out
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: fake.sessions[1].responses, timeout=10.0)

        return user

    async with fake:
        captured, _ = await converse(fake, tmp_path, steps, reconnect_backoff=0.05)
    captured.raise_errors()  # a reconnect is no error
    first, second = fake.sessions
    assert first.close_code == 1011
    items = [m["item"] for m in second.received if m["type"] == "conversation.item.create"]
    assert [(i["role"], i["content"][0]) for i in items] == [
        ("user", {"type": "input_text", "text": QUESTION}),
        ("assistant", {"type": "output_text", "text": REPLY}),
    ]
    assert second.types_received().index("session.update") < second.types_received().index(
        "conversation.item.create"
    )
    assert [m["content"] for m in transcript(tmp_path)] == [QUESTION, REPLY, "and tomorrow", "Rain tomorrow."]


@pytest.mark.parametrize(("key", "said"), [("sk-wrong", "HTTP 401"), ("sk-bad", "invalid_api_key")])
async def test_a_rejected_key_ends_the_graph_naming_the_variable(key: str, said: str) -> None:
    async with FakeOpenAIRealtime() as fake:
        node = OpenAIRealtime(api_key=key, base_url=fake.base_url, name="agent")
        with pytest.raises(FatalProcessorError) as failed:
            await node.on_start()
        await node.close_session()
    message = str(failed.value)
    assert said in message and "OPENAI_API_KEY" in message and key not in message


@pytest.mark.parametrize("turn_detection", ["server", "local"])
async def test_s2s_openai_conforms(turn_detection: str) -> None:
    utterance, interruption = speech(), barge_in_speech()
    if turn_detection == "local":  # as a VAD before the node would mark them
        voice = b"".join(f.pcm for f in utterance if isinstance(f, AudioFrame))
        utterance = speech_script(voice, RATE, start=0.0, end=2.3)
        interruption = [UserStartedSpeakingFrame(stream_time=0.0), *interruption]
    async with FakeOpenAIRealtime(replies=[REPLY], reply_ms=3000, speed=4) as fake:
        replies = await check_s2s(
            lambda: agent(fake, turn_detection=turn_detection), utterance, interruption, timeout=20.0
        )
    assert replies[0] == REPLY


async def stubborn_search(query: str) -> str:
    """Search that takes a moment to stop when cancelled (it closes its connection).

    Args:
        query: what to look for
    """
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await asyncio.sleep(0.3)
        raise
    return query


def node_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of the node (its receiver, held reply end, tool rounds) and of its tools, still running."""
    names = ("s2s", "tool:")
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_name().startswith(names)]


@pytest.mark.parametrize("pending", ["a held reply end", "a tool call"])
async def test_a_cancel_mid_reply_leaves_no_task_of_the_node_running(pending: str, tmp_path: Path) -> None:
    fake = FakeOpenAIRealtime(replies=[REPLY], reply_ms=300, speed=8)
    if pending == "a held reply end":
        fake.transcript_delay = 10.0  # the reply's end waits for the user's words
        params: dict[str, Any] = {}
    else:
        fake.tool_arguments = '{"query": "news"}'
        params = {"tools": [{"name": "stubborn_search", "function": f"{__name__}:stubborn_search"}]}
    node: OpenAIRealtime | None = None

    def steps(speaker: FileOutput) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].responses, timeout=10.0)
            live = node
            assert live is not None
            await poll(lambda: live._held_end is not None or bool(live._tools), timeout=5.0)
            yield CancelFrame()

        return user

    async with fake:
        node = agent(fake, **params)
        await converse(fake, tmp_path, steps, node=node)
        assert node_tasks() == []


def test_an_empty_key_is_a_validation_problem() -> None:
    node = OpenAIRealtime(api_key="", name="agent")
    assert any("OPENAI_API_KEY" in p.message for p in node.check())


async def test_sends_between_two_sessions_are_dropped_quietly() -> None:
    """No connection (before the first session, or while a new one is opened): nothing to send on."""
    async with FakeOpenAIRealtime() as fake:
        node = agent(fake, turn_detection="local")
        await node.send_audio(bytes(480))
        await node.end_user_turn()
        await node.cancel_reply(True, [("item-1", 200)])
        call = ToolCall("call-1", "get_weather", "{}")
        await node.send_tool_results([(call, '{"temp": 21}')], respond=True)
        await node._restore([{"role": "user", "content": "hello"}])
    assert fake.sessions == []


def test_the_responses_a_barge_in_cut_are_the_latest_ones() -> None:
    """The ids whose late audio is dropped are bounded: the oldest goes, never the one just cut."""
    node = OpenAIRealtime(api_key="sk-test", name="agent")
    for n in range(500):
        node.cancel_response(f"resp-{n}")
        kept = [f"resp-{k}" for k in range(max(0, n - CANCELLED_KEPT + 1), n + 1)]
        assert sorted(node._cancelled) == sorted(kept), n


async def test_background_tools_outlive_a_barge_in_up_to_the_cap() -> None:
    """Background calls run on after a barge-in, at most ``MAX_BACKGROUND_TOOLS`` at once."""
    tools = [{"name": "slow_search", "function": "tests.tools_example:slow_search", "background": True}]
    node = OpenAIRealtime(api_key="sk-test", name="agent", tools=tools)
    calls = [ToolCall(f"call-{n}", "slow_search", '{"query": "news", "seconds": 30}') for n in range(12)]
    await node._start_tools(ToolCallsRequested(calls[:5]))
    await node._stop_tools(cancel_background=False)  # a barge-in: all five run on
    await node._start_tools(ToolCallsRequested(calls[5:]))
    await node._stop_tools(cancel_background=False)  # another: three more, up to the cap
    try:
        running = sorted(call.call_id for task, call in node._tools.items() if not task.cancelled())
        assert running == sorted(c.call_id for c in calls[:MAX_BACKGROUND_TOOLS])
    finally:
        await node.on_stop()


# --- configs/assistant-realtime.yaml, served -------------------------------------------------------


@pytest.mark.slow
async def test_the_realtime_assistant_config_answers_a_browser_aloud_and_records_it(tmp_path: Path) -> None:
    async with FakeOpenAIRealtime(transcripts=[QUESTION], replies=[REPLY], reply_ms=1000, speed=4) as fake:
        env = {"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url}
        client, reply, saved = await browser_turn(CONFIG, env, tmp_path)
    [session] = fake.sessions  # the warm-up opens no (billed) session
    update = next(m for m in session.received if m["type"] == "session.update")["session"]
    assert "Vox" in update["instructions"]
    assert [t["name"] for t in update["tools"]] == ["current_time", "end_call"]
    assert [m["text"] for m in client.of("transcript") if m["final"]] == [QUESTION]
    assert reply == REPLY and len(client.audio) > 0
    assert saved == [("user", QUESTION), ("assistant", REPLY)]
