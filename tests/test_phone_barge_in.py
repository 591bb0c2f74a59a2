"""A caller talks over the bot's reply: real speech, a real VAD, a fake Twilio on 127.0.0.1.

LibriVox clips go out as 20 ms μ-law media in real time; Silero hears them at 8 kHz and Whisper
tiny.en transcribes them; a scripted storyteller replies and espeak-ng speaks it, resampled to the
line's 8 kHz before the recorder (the bot as the caller hears it). The caller's speech over the reply
must ``clear`` the carrier's buffer, and the LLM's history and the recording must keep only the
sentences the carrier echoed as played. The time from the caller's speech onset in the stream to the
``clear`` is printed (never asserted).
"""

from __future__ import annotations

import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import soxr

from pipeline import config
from pipeline.capacity import LoadMeter
from processors.llm.base import ChatLLM
from tests.fakes.carrier import FRAME_S, RATE, FakeTwilio, FakeTwilioRest
from tests.speech import librivox, read_wav, speech_regions
from tests.test_phone_twilio import (
    _fresh,  # noqa: F401  (autouse: the auth token)
    ended,
    transcripts,
)
from transports.websocket.server import VoiceServer

HERE = "tests.test_phone_barge_in"
STORY = [
    "Once upon a time there was a fox.",
    "It lived in a deep green wood, far from any road.",
    "One day it met a bear by the river.",
    "They talked until the sun went down behind the hills.",
    "Then they both went home to sleep.",
]
SECOND_REPLY = "All right, I will stop there."


class Storyteller(ChatLLM):
    """Tells ``STORY`` to the first turn and ``SECOND_REPLY`` to any later one; keeps every request."""

    requests: ClassVar[list[list[dict[str, Any]]]] = []

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        Storyteller.requests.append([dict(m) for m in messages])
        reply = " ".join(STORY) if len(Storyteller.requests) == 1 else SECOND_REPLY
        for word in reply.split():
            yield word + " "


GRAPH = """
name: phone-speech
server: {{type: websocket, port: 0, max_sessions: 2}}
settings: {{auto_resample: true, end_timeout: 3.0, cancel_timeout: 2.0}}
nodes:
  mic: {{type: phone.input, twilio_api_url: "{rest}"{mic}}}
  vad: {{type: vad.silero, start_secs: 0.15, stop_secs: {stop_secs}, pause_secs: 0.15}}
  stt: {{type: {stt}}}
  turns: {{type: turn.taking}}
  llm: {{type: "{here}:Storyteller"}}
  tts: {{type: tts.espeak, first_chunk_min_words: 0}}
  line: {{type: audio.resample, sample_rate: 8000}}
  recorder: {{type: recorder, directory: "{recordings}"}}
  speaker: {{type: phone.output}}
edges:
  - {edges}
"""
VAD_FIRST = "mic -> vad -> stt -> turns -> llm -> tts -> line -> recorder -> speaker"


@pytest.fixture(autouse=True)
def _no_requests() -> None:
    Storyteller.requests.clear()


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    *,
    mic: str = "",
    stt: str = "stt.whisper",
    stop_secs: float = 0.4,
    edges: str = VAD_FIRST,
) -> AsyncIterator[tuple[VoiceServer, FakeTwilioRest]]:
    """A warmed-up server for the story graph, and the fake REST API its hang-ups go to."""
    rest = FakeTwilioRest()
    await rest.start()
    text = GRAPH.format(
        rest=rest.url, mic=mic, stt=stt, stop_secs=stop_secs, edges=edges, here=HERE, recordings=tmp_path
    )
    compiled, problems = config.compile_text(text, "<test>")
    assert compiled is not None and not problems, problems
    server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
    await server.start()
    try:
        await server.warm_up()
        yield server, rest
    finally:
        await asyncio.wait_for(server.stop(), 30)
        await rest.stop()


def clip(name: str) -> bytes:
    """A LibriVox clip as the phone network carries it: 8 kHz s16le."""
    samples, rate = read_wav(librivox(name))
    return bytes(soxr.resample(samples, rate, RATE).astype("<i2").tobytes())


def onset_frame(pcm8k: bytes) -> int:
    """The 20 ms frame of ``pcm8k`` in which its speech begins."""
    start, _ = speech_regions(np.frombuffer(pcm8k, dtype="<i2"), RATE)
    return int(start / FRAME_S)


def voiced_seconds(pcm: bytes, rate: int = RATE) -> float:
    """Seconds of 20 ms windows loud enough to be speech (the bot's words, not the gaps)."""
    hop = rate // 50
    samples = np.frombuffer(pcm, dtype="<i2")[: len(pcm) // 2 // hop * hop].astype(np.float64)
    if not samples.size:
        return 0.0
    rms = np.sqrt((samples.reshape(-1, hop) ** 2).mean(axis=1))
    return float((rms > 300).sum() * hop / rate)


def read_track(path: Path) -> tuple[bytes, int]:
    """All audio of a recorded WAV and its rate; fails unless the header and the data agree."""
    with wave.open(str(path), "rb") as file:
        frames, rate = file.getnframes(), file.getframerate()
        assert file.getnchannels() == 1 and file.getsampwidth() == 2
        pcm = file.readframes(frames)
    assert len(pcm) == 2 * frames, f"{path.name}: header says {frames} frames, data holds {len(pcm) // 2}"
    return pcm, rate


def played_seconds_since_mark(carrier: FakeTwilio, index: int) -> float:
    """Seconds of bot audio the caller heard since the ``index``-th mark played (0 before it)."""
    if len(carrier.played.marks_at) <= index:
        return 0.0
    return (len(carrier.played.pcm) - carrier.played.marks_at[index]) / 2 / RATE


@pytest.mark.slow
async def test_talking_over_the_reply_clears_it_and_only_what_was_played_is_kept(tmp_path: Path) -> None:
    barge = clip("0930")  # "he might even have been made amiable himself"
    async with serving(tmp_path) as (server, _):
        carrier = FakeTwilio(server.url)
        await carrier.call()
        await carrier.silence(0.3)
        await carrier.speak(clip("0880"))  # "he was not an ill disposed young man"
        await carrier.silence_until(
            lambda: played_seconds_since_mark(carrier, 1) > 0.6, "the second sentence playing", 40
        )
        first = len(carrier.media_sent)
        await carrier.speak(barge)
        onset_at = carrier.media_sent[first + onset_frame(barge)]
        spoken_end = carrier.media_sent[-1]
        heard_before_clear = len(carrier.played.marks)
        await carrier.until(lambda: bool(carrier.cleared_at), "a clear", 5)
        await carrier.silence_until(
            lambda: (
                len(Storyteller.requests) == 2
                and len(carrier.played.marks) > heard_before_clear
                and carrier.queued_seconds == 0
            ),
            "the answer to the second turn",
            40,
        )
        await carrier.silence(0.5)  # the recorder's user clock passes the reply's end
        await carrier.stop()
        await ended(server)
    assert carrier.violations == []
    clear_at = carrier.cleared_at[0]
    print(f"barge-in, caller's speech onset in the stream to clear: {(clear_at - onset_at) * 1000:.0f} ms")
    assert onset_at < clear_at < spoken_end  # the caller's voice did it, while still talking
    assert len(carrier.cleared_at) == 1

    # the carrier reached 2..4 sentences' marks before the clear: those, and only those, were heard
    heard = STORY[:heard_before_clear]
    unheard = STORY[heard_before_clear:]
    assert 2 <= len(heard) < len(STORY), carrier.played.marks
    # nothing of the first reply followed the clear: the next message is the second reply's mark
    after = [m["event"] for t, m in carrier.received if t > clear_at]
    assert after and after[0] == "mark", after[:5]

    # the LLM's history: its first reply is what was heard, then the caller's words over it
    history = Storyteller.requests[1]
    assert [m["role"] for m in history[1:]] == ["user", "assistant", "user"]
    told = history[2]["content"]
    assert all(sentence in told for sentence in heard), told
    assert not any(sentence in told for sentence in unheard), told
    said = set(history[3]["content"].lower().replace(".", "").split())
    assert len(said & {"might", "even", "have", "been", "made", "amiable", "himself"}) >= 4, said

    # the recording: the same text, the reply marked interrupted, and the bot audio as played
    [transcript] = transcripts(tmp_path)
    messages = transcript["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1].get("type") == "interrupted" and messages[1]["content"] == told
    assert messages[3]["content"].strip() == SECOND_REPLY and "type" not in messages[3]
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    bot, rate = read_track(folder / "bot.wav")
    assert rate == RATE
    recorded, played = voiced_seconds(bot), voiced_seconds(bytes(carrier.played.pcm))
    print(f"bot voiced: {recorded:.2f} s recorded, {played:.2f} s played to the caller")
    assert recorded == pytest.approx(played, abs=0.4)
