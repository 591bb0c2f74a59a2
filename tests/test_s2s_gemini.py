"""``s2s.gemini`` against the Gemini Live fake, through ``google-genai``: real speech in, the bot's audio
played in real time by ``file.output``, the conversation kept by ``recorder``.

The graph is a live call's: driver (the user) -> live -> recorder -> speaker. The driver sends real
speech (LibriVox, 16 kHz) and waits for what the fake or the speaker did before going on. The fake
serves TLS with its own certificate: ``SSL_CERT_FILE`` makes the SDK trust it, as it would a proxy's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import FatalProcessorError
from pipeline.frames import (
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMToolCallFrame,
    TranscriptFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.resampling import Int16Resampler
from pipeline.testing import Captured
from processors.llm.gemini import function_declaration
from processors.s2s.base import BotAudio, ResponseDone
from processors.s2s.gemini import UNWANTED_KEPT, GeminiLive
from tests.fakes.gemini_live import FakeFunctionCall, FakeGeminiLive, LiveSession, LiveTurn, pick
from tests.s2s_calls import Steps, browser_turn, call, played, poll, seconds, transcript
from tests.speech import audio_frames, librivox, read_wav, silence, tone
from transports.file import FileOutput

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "assistant-live.yaml"
QUESTION = "What is the weather in Paris?"
REPLY = "It is sunny in Paris today, with a light breeze."
STORY = "Once upon a time there was a little voice assistant who talked and talked."


def speech() -> list[Frame]:
    """A real spoken sentence at 16 kHz (2.3 s), then 0.8 s of silence that ends the turn."""
    samples, rate = read_wav(librivox("0880"))
    assert rate == 16000
    return audio_frames(samples, silence(0.8))


def talking_over() -> list[Frame]:
    """The user talks over the bot (no silence after it: no second turn)."""
    return audio_frames(tone(0.3))


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGeminiLive]:
    async with FakeGeminiLive(silence_ms=600, chunk_delay=0.005) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_file))
        yield server


def live(fake: FakeGeminiLive, **params: Any) -> GeminiLive:
    return GeminiLive(api_key=fake.api_key, base_url=fake.base_url, name="live", **params)


async def converse(
    fake: FakeGeminiLive,
    tmp_path: Path,
    steps: Callable[[Any], Steps],
    node: GeminiLive | None = None,
    **params: Any,
) -> tuple[Captured, FileOutput]:
    return await call(node or live(fake, **params), tmp_path, steps)


def answered(session: LiveSession, turns: int = 1) -> bool:
    """The fake finished ``turns`` model turns (``usageMetadata`` follows each ``turnComplete``)."""
    return session.kinds_sent().count("usageMetadata") >= turns


async def test_a_spoken_turn_is_answered_aloud_and_recorded(fake: FakeGeminiLive, tmp_path: Path) -> None:
    fake.turns = [LiveTurn(heard=QUESTION, reply=REPLY)]

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[0]), timeout=10.0)
            await poll(lambda: played(speaker) * 1000 >= fake.sessions[0].audio_out_ms - 1)

        return user

    captured, _ = await converse(fake, tmp_path, steps, voice="Kore", system_prompt="Be brief.")
    captured.raise_errors()
    [session] = fake.sessions
    assert session.version == "v1beta" and session.input_rates == {16000}
    setup = session.setup
    assert pick(pick(setup, "generationConfig"), "responseModalities") == ["AUDIO"]
    voice = pick(pick(pick(setup, "generationConfig"), "speechConfig"), "voiceConfig")
    assert pick(pick(voice, "prebuiltVoiceConfig"), "voiceName") == "Kore"
    assert pick(setup, "systemInstruction")["parts"] == [{"text": "Be brief."}]
    assert pick(setup, "inputAudioTranscription") == {} and pick(setup, "outputAudioTranscription") == {}
    assert pick(setup, "realtimeInputConfig") is None  # the server's VAD finds the turns
    assert transcript(tmp_path) == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": REPLY},
    ]
    assert seconds(tmp_path / "heard.wav") == pytest.approx(session.audio_out_ms / 1000, abs=0.03)
    user_seconds = sum(f.duration for f in speech())  # type: ignore[attr-defined]
    assert seconds(tmp_path / "recordings" / "call" / "user.wav") == pytest.approx(user_seconds, abs=0.03)
    assert session.audio_in_ms == pytest.approx(1000 * user_seconds, abs=30)
    assert [t.text for t in captured.of(TranscriptFrame)] == [QUESTION]


async def test_a_barge_in_clears_the_output_and_keeps_what_was_heard(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    fake.turns = [LiveTurn(heard=QUESTION, reply=STORY)]
    fake.chunk_delay = 0.02  # 40 ms of audio every 20 ms: twice real time, as the real service streams

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await poll(lambda: played(speaker) >= 1.0)  # the user hears a second of the answer
            for frame in talking_over():
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].interrupted, timeout=5.0)
            await poll(lambda: not speaker._playout.speaking, timeout=5.0)

        return user

    captured, _ = await converse(fake, tmp_path, steps)
    captured.raise_errors()
    [session] = fake.sessions
    assert session.interrupted == 1 and len(captured.of(InterruptionFrame)) == 1
    heard = seconds(tmp_path / "heard.wav")
    assert 1.0 <= heard < 1.6, heard  # the output fell silent at the barge-in
    assert session.audio_out_ms / 1000 > heard + 0.5  # what was generated but never played is gone
    [user, bot] = transcript(tmp_path)
    assert user == {"role": "user", "content": QUESTION} and bot["type"] == "interrupted"
    assert STORY.startswith(bot["content"].rstrip()) and len(bot["content"]) < len(session.replies[0])


async def test_a_tool_call_is_answered_with_its_id_and_the_reply_speaks_the_result(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    call = FakeFunctionCall("get_weather", {"city": "Paris"})
    fake.turns = [LiveTurn(heard=QUESTION, reply="Here you go: {tool}", calls=[call])]

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[0]), timeout=10.0)
            await poll(lambda: played(speaker) * 1000 >= fake.sessions[0].audio_out_ms - 1)

        return user

    tools = [{"get_weather": "tests.tools_example:get_weather"}]
    captured, _ = await converse(fake, tmp_path, steps, tools=tools)
    captured.raise_errors()
    [session] = fake.sessions
    [declarations] = [pick(tool, "functionDeclarations") for tool in pick(session.setup, "tools")]
    assert [d["name"] for d in declarations] == ["get_weather"]
    assert declarations[0]["parameters_json_schema"]["required"] == ["city"]
    [response] = session.tool_responses
    assert response["id"] == "function-call-1" and response["name"] == "get_weather"
    assert response["response"]["output"]["city"] == "Paris"
    [frame] = captured.of(LLMToolCallFrame)
    assert (frame.call_id, frame.name, json.loads(frame.arguments)) == call_as_sent()
    assert len(captured.of(LLMResponseEndFrame)) == 1  # the call and the answer are one reply
    [_, bot] = transcript(tmp_path)
    assert bot["content"].startswith("Here you go:") and '"temperature": 21' in bot["content"]


def call_as_sent() -> tuple[str, str, dict[str, str]]:
    return ("function-call-1", "get_weather", {"city": "Paris"})


async def test_a_cancelled_tool_call_is_never_answered(fake: FakeGeminiLive, tmp_path: Path) -> None:
    slow = FakeFunctionCall("slow_search", {"query": "opening hours", "seconds": 0.3})
    fake.turns = [
        LiveTurn(heard="Search it.", reply="Found it.", calls=[slow]),
        LiveTurn(heard="Never mind.", reply="Okay."),
    ]
    # Marked background, the tool would outlive a barge-in: only the server's cancellation stops it.
    tools = [{"name": "slow_search", "function": "tests.tools_example:slow_search", "background": True}]
    node = live(fake, tools=tools)

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: "toolCall" in fake.sessions[0].kinds_sent(), timeout=10.0)
            for frame in talking_over():  # the user speaks over the pending call
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].cancelled_calls, timeout=5.0)
            await poll(lambda: not node._answers, timeout=5.0)  # no result is on its way
            for frame in audio_frames(silence(0.8)):  # the interrupting turn ends: answered on
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[0]), timeout=10.0)

        return user

    captured, _ = await converse(fake, tmp_path, steps, node=node)
    captured.raise_errors()
    [session] = fake.sessions
    assert session.cancelled_calls == ["function-call-1"] and session.tool_responses == []
    assert session.close_code is None  # a response for a cancelled id would have been refused
    assert [m["content"] for m in transcript(tmp_path)] == ["Search it.", "Never mind.", "Okay."]


async def test_local_turn_detection_marks_activity(fake: FakeGeminiLive, tmp_path: Path) -> None:
    fake.turns = [LiveTurn(heard=QUESTION, reply=REPLY)]

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            frames = speech()
            yield UserStartedSpeakingFrame(stream_time=0.0)
            for frame in frames[:-30]:
                yield frame
            yield UserStoppedSpeakingFrame(stream_time=2.3)  # overtakes audio: the end waits for it
            for frame in frames[-30:]:
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[0]), timeout=10.0)

        return user

    captured, _ = await converse(fake, tmp_path, steps, turn_detection="local")
    captured.raise_errors()
    [session] = fake.sessions
    detection = pick(pick(session.setup, "realtimeInputConfig"), "automaticActivityDetection")
    assert detection == {"disabled": True}
    marks = [next(iter(pick(m, "realtimeInput"))) for m in session.received if pick(m, "realtimeInput")]
    marks = [m for m in marks if m != "audio"]
    assert marks == ["activityStart", "activityEnd"]
    assert [m["role"] for m in transcript(tmp_path)] == ["user", "assistant"]


async def test_a_dropped_connection_is_a_clear_error_and_the_recording_is_intact(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    fake.turns = [LiveTurn(heard=QUESTION, reply=REPLY)]

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[0]), timeout=10.0)
            await poll(lambda: played(speaker) * 1000 >= fake.sessions[0].audio_out_ms - 1)
            await fake.close_sessions(1011, "Internal error encountered.")
            await fake.wait_until(lambda: not fake.sessions[0].open, timeout=5.0)
            for frame in speech():  # the user goes on talking: recorded, not answered
                yield frame

        return user

    captured, _ = await converse(fake, tmp_path, steps)
    [error] = captured.errors
    assert "closed (close 1011: Internal error encountered.)" in error.message
    assert "recorded but not answered" in error.message and not error.fatal
    assert transcript(tmp_path) == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": REPLY},
    ]
    user_seconds = 2 * sum(f.duration for f in speech())  # type: ignore[attr-defined]
    assert seconds(tmp_path / "recordings" / "call" / "user.wav") == pytest.approx(user_seconds, abs=0.03)


async def test_a_rejected_key_ends_the_graph_naming_the_variable(fake: FakeGeminiLive) -> None:
    node = GeminiLive(api_key="AIza-wrong-key", base_url=fake.base_url, name="live")
    with pytest.raises(FatalProcessorError) as failed:
        await node.on_start()
    await node.close_session()
    message = str(failed.value)
    assert "close 1008" in message and "GEMINI_API_KEY" in message and "AIza-wrong-key" not in message


def test_an_empty_key_is_a_validation_problem() -> None:
    node = GeminiLive(api_key="", name="live")
    assert any("GEMINI_API_KEY" in p.message for p in node.check())


def test_tools_are_declared_as_the_chat_node_declares_them() -> None:
    tools = [{"get_weather": "tests.tools_example:get_weather"}]
    from google.genai import types

    node = GeminiLive(api_key="AIza-key", name="live", tools=tools)
    [tool] = node.live_config().tools or []
    assert isinstance(tool, types.Tool)
    assert tool.function_declarations == [function_declaration(s) for s in node.toolset.schemas()]


def test_audio_at_another_rate_is_resampled_as_one_stream() -> None:
    """A reply at 16 kHz, in 40 ms parts, comes out at 24 kHz as if resampled whole: no clicks where
    the parts meet."""
    import numpy as np
    from google.genai import types

    t = np.arange(16000) / 16000
    tone_16k = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    node = GeminiLive(api_key="AIza-key", name="live")
    pcm = b""
    for start in range(0, len(tone_16k), 640):
        blob = types.Blob(data=tone_16k[start : start + 640].tobytes(), mime_type="audio/pcm;rate=16000")
        content = types.LiveServerContent(model_turn=types.Content(parts=[types.Part(inline_data=blob)]))
        events = node._translate(types.LiveServerMessage(server_content=content))
        pcm += b"".join(e.pcm for e in events if isinstance(e, BotAudio))
    done = node._translate(
        types.LiveServerMessage(server_content=types.LiveServerContent(turn_complete=True))
    )
    pcm += b"".join(e.pcm for e in done if isinstance(e, BotAudio))
    assert [type(e) for e in done][-1] is ResponseDone  # the filter's tail comes before the turn's end
    whole = Int16Resampler(16000, 24000, 1)
    expected = np.concatenate([whole.resample(tone_16k.reshape(-1, 1)), whole.flush()]).ravel()
    got = np.frombuffer(pcm, dtype="<i2")
    assert len(got) == len(expected) == 24000
    assert int(np.max(np.abs(got.astype(int) - expected.astype(int)))) <= 1


# --- configs/assistant-live.yaml, served ----------------------------------------------------------


@pytest.mark.slow
async def test_the_live_assistant_config_answers_a_browser_aloud_and_records_it(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    fake.turns = [LiveTurn(heard=QUESTION, reply=REPLY)]
    env = {"GEMINI_API_KEY": fake.api_key, "GEMINI_BASE_URL": fake.base_url}
    client, reply, saved = await browser_turn(CONFIG, env, tmp_path)
    [session] = fake.sessions  # the warm-up opens no (billed) session
    assert "Vox" in pick(session.setup, "systemInstruction")["parts"][0]["text"]
    names = [d["name"] for t in pick(session.setup, "tools") for d in pick(t, "functionDeclarations")]
    assert names == ["current_time", "end_call"]
    assert [m["text"] for m in client.of("transcript") if m["final"]] == [QUESTION]
    assert reply == REPLY and len(client.audio) > 0
    assert saved == [("user", QUESTION), ("assistant", REPLY)]


async def test_after_go_away_the_session_resumes_on_a_new_connection(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    fake.turns = [LiveTurn(heard=QUESTION, reply=REPLY), LiveTurn(heard="And tomorrow?", reply="Rain.")]

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: "sessionResumptionUpdate" in fake.sessions[0].kinds_sent(), 10.0)
            await poll(lambda: played(speaker) * 1000 >= fake.sessions[0].audio_out_ms - 1)
            await fake.go_away("1s")
            await fake.close_sessions(1000, "Session duration limit reached.")  # the time ran out
            await fake.wait_until(lambda: len(fake.sessions) == 2 and fake.sessions[1].sent, 10.0)
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[1]), timeout=10.0)

        return user

    node = live(fake)
    captured, _ = await converse(fake, tmp_path, steps, node=node)
    captured.raise_errors()
    first, second = fake.sessions
    assert pick(first.setup, "sessionResumption") == {} and first.close_code == 1000
    assert second.resumed_from == "handle-1" and node.resumptions == 1
    assert second.user_turns == ["And tomorrow?"]  # the conversation went on where it was
    assert [m["content"] for m in transcript(tmp_path)] == [QUESTION, REPLY, "And tomorrow?", "Rain."]


async def test_local_turns_during_a_resume_are_marked_on_the_new_connection(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    """Our VAD's start and stop of a turn that came while the new connection was being set up are sent
    once it is: the turn is answered, and no error reaches the client."""
    fake.turns = [LiveTurn(heard=QUESTION, reply=REPLY), LiveTurn(heard="And tomorrow?", reply="Rain.")]
    node = live(fake, turn_detection="local")
    turn = speech()
    turn_seconds = sum(f.duration for f in turn)  # type: ignore[attr-defined]

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            yield UserStartedSpeakingFrame(stream_time=0.0)
            for frame in turn:
                yield frame
            yield UserStoppedSpeakingFrame(stream_time=turn_seconds)
            await fake.wait_until(lambda: "sessionResumptionUpdate" in fake.sessions[0].kinds_sent(), 10.0)
            await poll(lambda: played(speaker) * 1000 >= fake.sessions[0].audio_out_ms - 1)
            fake.setup_open.clear()  # the new connection's setup waits until the next turn is over
            await fake.go_away("1s")
            await fake.close_sessions(1000, "Session duration limit reached.")
            await fake.wait_until(lambda: len(fake.sessions) == 2 and fake.sessions[1].setup, 10.0)
            yield UserStartedSpeakingFrame(stream_time=turn_seconds)
            for frame in turn:
                yield frame
            yield UserStoppedSpeakingFrame(stream_time=2 * turn_seconds)
            await poll(lambda: node._sent_seconds >= 2 * turn_seconds - 1e-6 and node._commit_at is None)
            fake.setup_open.set()
            await fake.wait_until(lambda: answered(fake.sessions[1]), timeout=10.0)

        return user

    captured, _ = await converse(fake, tmp_path, steps, node=node)
    captured.raise_errors()
    second = fake.sessions[1]
    assert second.resumed_from == "handle-1" and node.resumptions == 1
    marks = [next(iter(pick(m, "realtimeInput"))) for m in second.received if pick(m, "realtimeInput")]
    assert [m for m in marks if m != "audio"] == ["activityStart", "activityEnd"]
    assert second.user_turns == ["And tomorrow?"]
    assert [m["content"] for m in transcript(tmp_path)] == [QUESTION, REPLY, "And tomorrow?", "Rain."]


async def test_a_call_still_running_at_a_resume_is_not_answered_on_the_new_connection(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    """The new connection never saw the old one's call: its result would be an unknown id there."""
    slow = FakeFunctionCall("slow_search", {"query": "opening hours", "seconds": 0.5})
    fake.turns = [LiveTurn(heard=QUESTION, reply=REPLY), LiveTurn(heard="Search it.", calls=[slow])]
    node = live(fake, tools=[{"name": "slow_search", "function": "tests.tools_example:slow_search"}])

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: "sessionResumptionUpdate" in fake.sessions[0].kinds_sent(), 10.0)
            await poll(lambda: played(speaker) * 1000 >= fake.sessions[0].audio_out_ms - 1)
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: "toolCall" in fake.sessions[0].kinds_sent(), timeout=10.0)
            await fake.go_away("1s")
            await fake.close_sessions(1000, "Session duration limit reached.")
            await fake.wait_until(lambda: len(fake.sessions) == 2 and fake.sessions[1].sent, 10.0)
            await poll(lambda: not node._answers, timeout=5.0)  # the call has finished

        return user

    captured, _ = await converse(fake, tmp_path, steps, node=node)
    captured.raise_errors()
    second = fake.sessions[1]
    assert second.resumed_from == "handle-1" and second.tool_responses == []
    assert second.close_code is None  # an unknown id would have been refused (close 1007)


def test_the_calls_never_to_answer_are_the_latest_ones() -> None:
    node = GeminiLive(api_key="AIza-key", name="live")
    for n in range(300):
        node.cancel_tool_calls([f"call-{n}"])
        assert f"call-{n}" in node._unwanted
    assert len(node._unwanted) == UNWANTED_KEPT and "call-0" not in node._unwanted


async def test_a_turn_mark_that_finds_the_connection_closed_waits_for_the_next_one() -> None:
    import websockets

    class Closed:
        """A connection the server has just closed (the receiving side has not seen it yet)."""

        async def send_realtime_input(self, **_: Any) -> None:
            raise websockets.exceptions.ConnectionClosed(None, None)

    node = GeminiLive(api_key="AIza-key", name="live", turn_detection="local")
    node._session = Closed()  # type: ignore[assignment]
    await node.begin_user_turn()
    await node.end_user_turn()  # raises nothing: the error is the close, reported once
    assert node._missed_end and not node._user_speaking


async def test_without_resume_a_go_away_close_ends_the_conversation(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[0]), timeout=10.0)
            await fake.go_away("1s")
            await fake.close_sessions(1000, "Session duration limit reached.")
            await fake.wait_until(lambda: not fake.sessions[0].open, timeout=5.0)

        return user

    captured, _ = await converse(fake, tmp_path, steps, resume=False)
    [error] = captured.errors
    assert "close 1000: Session duration limit reached." in error.message and len(fake.sessions) == 1
    assert pick(fake.sessions[0].setup, "sessionResumption") is None


async def test_words_over_a_reply_still_playing_stop_it(fake: FakeGeminiLive, tmp_path: Path) -> None:
    """The model's turn is complete (all its audio sent) but plays on: Gemini sends no ``interrupted``
    then, so the user's next words, once transcribed, are the barge-in."""
    fake.turns = [LiveTurn(heard=QUESTION, reply=STORY), LiveTurn(heard="Stop.", reply="Okay.")]
    fake.chunk_delay = 0.0  # the whole reply arrives at once

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[0]), timeout=10.0)
            await poll(lambda: played(speaker) >= 1.0)
            for frame in audio_frames(tone(0.3), silence(0.8)):  # a new turn over the old reply
                yield frame
            await fake.wait_until(lambda: answered(fake.sessions[0], 2), timeout=10.0)
            await poll(lambda: not speaker._playout.speaking, timeout=5.0)

        return user

    captured, _ = await converse(fake, tmp_path, steps)
    captured.raise_errors()
    [session] = fake.sessions
    assert session.interrupted == 0 and len(captured.of(InterruptionFrame)) == 1
    first, said, second = transcript(tmp_path)[1:]
    assert first["type"] == "interrupted" and STORY.startswith(first["content"].rstrip())
    assert (said["content"], second["content"]) == ("Stop.", "Okay.")
    assert seconds(tmp_path / "heard.wav") < session.audio_out_ms / 1000 - 1.0


async def test_connection_failures_end_the_graph_saying_what_to_check(
    fake: FakeGeminiLive, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [
        (fake.base_url + "/wrong", str(fake.cert_file), "refused the websocket (HTTP 404)"),
        (fake.base_url, "", "SSL_CERT_FILE"),  # the fake's certificate not trusted
        ("https://127.0.0.1:9", str(fake.cert_file), "cannot connect to https://127.0.0.1:9"),
    ]
    for base_url, trusted, said in cases:
        if trusted:
            monkeypatch.setenv("SSL_CERT_FILE", trusted)
        else:
            monkeypatch.delenv("SSL_CERT_FILE")
        node = GeminiLive(api_key=fake.api_key, base_url=base_url, name="live")
        with pytest.raises(FatalProcessorError) as failed:
            await node.on_start()
        await node.close_session()
        assert said in str(failed.value), (said, str(failed.value))


async def test_a_background_call_is_answered_after_a_barge_in_the_server_did_not_cancel(
    fake: FakeGeminiLive, tmp_path: Path
) -> None:
    fake.cancel_on_interrupt = False  # the server "may" cancel: this one keeps the call pending
    slow = FakeFunctionCall("slow_search", {"query": "opening hours", "seconds": 0.3})
    fake.turns = [LiveTurn(heard="Search it.", reply="Found it.", calls=[slow])]
    tools = [{"name": "slow_search", "function": "tests.tools_example:slow_search", "background": True}]

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            await fake.wait_until(lambda: "toolCall" in fake.sessions[0].kinds_sent(), timeout=10.0)
            for frame in talking_over():
                yield frame
            await fake.wait_until(lambda: fake.sessions[0].tool_responses, timeout=5.0)

        return user

    captured, _ = await converse(fake, tmp_path, steps, tools=tools)
    captured.raise_errors()
    [session] = fake.sessions
    assert session.interrupted == 1 and session.cancelled_calls == []
    [response] = session.tool_responses
    assert response["id"] == "function-call-1" and response["response"]["output"] == [
        "result for opening hours"
    ]


async def test_end_call_ends_the_session_after_the_goodbye(fake: FakeGeminiLive, tmp_path: Path) -> None:
    goodbye = "Goodbye, have a nice day."
    fake.turns = [LiveTurn(heard="That's all.", reply=goodbye, calls=[FakeFunctionCall("end_call")])]

    def steps(speaker: Any) -> Steps:
        async def user() -> AsyncIterator[Frame]:
            for frame in speech():
                yield frame
            for frame in audio_frames(silence(20.0)):  # a live line stays open
                await asyncio.sleep(0.02)  # pace, not synchronise
                yield frame

        return user

    began = asyncio.get_running_loop().time()
    captured, _ = await converse(fake, tmp_path, steps, tools=["end_call"])
    took = asyncio.get_running_loop().time() - began
    captured.raise_errors()
    assert took < 12.0, "the call ended after the goodbye, not at the end of the input"
    [session] = fake.sessions
    assert [r["name"] for r in session.tool_responses] == ["end_call"]
    assert [m["content"] for m in transcript(tmp_path)] == ["That's all.", goodbye]
    assert seconds(tmp_path / "heard.wav") == pytest.approx(session.audio_out_ms / 1000, abs=0.05)
