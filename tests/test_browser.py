"""The page in a real headless Chromium whose microphone plays a speech WAV, against the real server.

The graph is the conversation graph with real engines — VAD, Whisper, turn-taking, espeak-ng and the
recorder — and one stand-in: ``Parrot`` answers "You said: ..." instead of an LLM, so the reply is
known. The page must connect, show the spoken words, stream the reply and play its audio (bytes
counted on ``window.voxgraph``); the saved conversation must appear in the page's list. A screenshot
is left in ``tests/artifacts/browser.png``.

Drives the system browser (/usr/bin/chromium, installed by ./setup.sh) through the pip ``playwright``
package: nothing is downloaded (never run ``playwright install``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import numpy as np
import pytest
from playwright.async_api import Page, async_playwright

from pipeline import config
from pipeline.frames import (
    Frame,
    LLMResponseEndFrame,
    LLMResponseStartFrame,
    LLMTextFrame,
    UserTextFrame,
)
from pipeline.processor import Processor
from tests.speech import espeak, read_wav, silence, write_wav
from transports.websocket.server import VoiceServer

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).parent / "artifacts"
SENTENCE = "What is the weather like in Paris today?"
WAIT_MS = 40_000  # for each step; the whole test takes ~15 s


class Parrot(Processor):
    """Answers each user turn (or typed message) with "You said: <it>", streamed like an LLM."""

    handles: ClassVar[tuple[type[Frame], ...]] = (UserTextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (LLMTextFrame, UserTextFrame)

    async def process(self, frame: Any) -> None:
        await self.push(frame)  # the user's turn goes on, as an LLM node passes it (transcripts, recorder)
        await self.push(LLMResponseStartFrame())
        for chunk in ("You said: ", frame.text.strip()):
            await self.push(LLMTextFrame(text=chunk))
        await self.push(LLMResponseEndFrame())


GRAPH = """
name: browser-test
server: {type: websocket, port: 0, max_sessions: 2}
settings: {end_timeout: 5.0}
nodes:
  mic: {type: websocket.input}
  vad: {type: vad.webrtc, stop_secs: 0.5}
  stt: {type: stt.whisper, interim_interval_ms: 400}
  turns: {type: turn.taking}
  reply: {type: "tests.test_browser:Parrot"}
  tts: {type: tts.espeak}
  recorder: {type: recorder, directory: "RECORDINGS"}
  out: {type: websocket.output}
edges:
  - mic -> vad -> stt -> turns -> reply -> tts -> recorder -> out
"""


@pytest.fixture
def speech_wav(tmp_path: Path) -> Path:
    """The sentence with half a second of silence before and two after, so the VAD sees its end."""
    spoken, rate = read_wav(espeak(SENTENCE, tmp_path / "sentence.wav"))
    return write_wav(
        tmp_path / "mic.wav", np.concatenate([silence(0.5, rate), spoken, silence(2.0, rate)]), rate
    )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[VoiceServer]:
    text = GRAPH.replace("RECORDINGS", str(tmp_path / "recordings"))
    compiled, problems = config.compile_text(text, "<browser-test>")
    assert compiled is not None and not problems, problems
    voice = VoiceServer(compiled)
    await voice.start()
    yield voice
    await voice.stop()


FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


async def converse(url: str, speech_wav: Path, tmp_path: Path, screenshot: str) -> dict[str, Any]:
    """Open the page, click Start, let the fake microphone speak, wait for the reply to play, Stop.

    Returns what the page saw (``window.voxgraph``) once the conversation was saved and listed.
    """
    assert CHROMIUM.exists(), "chromium is missing: run ./setup.sh (apt-get install chromium)"
    flags = [*FLAGS, f"--use-file-for-fake-audio-capture={speech_wav}%noloop"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path),
            executable_path=str(CHROMIUM),
            headless=True,
            args=flags,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            await page.goto(url + "?raw=1&transport=websocket")  # raw: the fake mic unprocessed; over /ws
            await page.click("#start")
            await _until(page, "window.voxgraph.transcripts.length > 0")
            heard = await page.evaluate("window.voxgraph.transcripts[0]")
            assert heard in await page.inner_text("#log")  # shown, not only received

            await _until(page, "window.voxgraph.replies.length > 0 && window.voxgraph.botAudioBytes > 0")
            await _until(page, "window.voxgraph.status === 'listening'")  # the reply has played
            state: dict[str, Any] = await page.evaluate("window.voxgraph")

            await page.click("#start")  # Stop: the conversation drains, is saved and listed
            await _until(page, "window.voxgraph.status === 'ended'")
            await page.wait_for_selector(".conv-links a", timeout=WAIT_MS)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / screenshot))
            assert not problems, problems
        finally:
            await browser.close()
    return state


async def test_speaking_to_the_page_shows_the_words_and_plays_the_reply(
    server: VoiceServer, speech_wav: Path, tmp_path: Path
) -> None:
    state = await converse(server.url, speech_wav, tmp_path, "browser.png")
    assert "paris" in state["transcripts"][0].lower(), state["transcripts"]
    assert state["replies"][0].startswith("You said:") and "paris" in state["replies"][0].lower()
    assert state["botAudioBytes"] > 22050  # over half a second of espeak's 22.05 kHz voice
    assert state["metrics"] and 0 < state["metrics"][0] < 20_000
    assert state["micBytesSent"] > 2 * 16000 * 2  # the whole clip went out

    saved = tmp_path / "recordings" / state["sessionId"] / "transcript.json"
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages[:2]] == ["user", "assistant"], messages
    assert "paris" in messages[0]["content"].lower()


async def test_the_offline_assistant_answers_in_the_browser(speech_wav: Path, tmp_path: Path) -> None:
    """The main job as shipped: configs/assistant.yaml, every engine real (llama.cpp, Piper)."""
    recordings = tmp_path / "recordings"
    compiled, problems = config.compile_config(
        REPO / "configs" / "assistant.yaml", ["server.port=0", f"recorder.directory={recordings}"]
    )
    assert compiled is not None and not problems, problems
    voice = VoiceServer(compiled)
    await voice.start()
    try:
        state = await converse(voice.url, speech_wav, tmp_path, "assistant.png")
        async with aiohttp.ClientSession() as http, http.get(f"{voice.url}api/conversations") as response:
            listed = await response.json()
    finally:
        await voice.stop()
    assert "paris" in state["transcripts"][0].lower(), state["transcripts"]
    assert state["replies"][0].strip()  # SmolLM2 said something
    assert state["botAudioBytes"] > 22050  # and Piper spoke it (22.05 kHz)
    session = state["sessionId"]
    assert session in json.dumps(listed)
    saved = json.loads((recordings / session / "transcript.json").read_text())
    assert [m["role"] for m in saved["messages"][:2]] == ["user", "assistant"]
    for track in ("user.wav", "bot.wav", "mixed.wav"):
        assert (recordings / session / track).stat().st_size > 44


async def _until(page: Page, condition: str) -> None:
    """Wait for a condition on the page, showing what the page saw if it never holds."""
    try:
        await page.wait_for_function(condition, timeout=WAIT_MS)
    except Exception as error:
        seen = await page.evaluate("window.voxgraph")
        raise AssertionError(f"page never reached {condition!r}; it saw {json.dumps(seen)}") from error
