"""The page over WebRTC in a real headless Chromium whose microphone plays speech, against the real server.

The page's default transport: the microphone goes up as an Opus track, the bot's voice comes back as
the server's track, and the ``/ws`` messages travel on a data channel. What the page hears is measured
by its own meter on the remote track (``window.voxgraph.meters.bot``), so "a reply is heard" means
audio arrived and played, not only that bytes were counted. Chromium needs
``--allow-loopback-in-peer-connection`` to offer 127.0.0.1 candidates; nothing leaves the machine.

Also: barge-in silences the bot on the page; the page falls back to the websocket when the server
does not take WebRTC or the call does not connect; a malformed data-channel message gets an error and
the conversation goes on; a browser killed without closing ends its conversation within seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright

from pipeline import config
from pipeline.frames import Frame, LLMResponseEndFrame, LLMResponseStartFrame, LLMTextFrame, UserTextFrame
from pipeline.processor import Processor
from tests.speech import espeak, read_wav, silence, write_wav
from tests.test_browser import CHROMIUM, FLAGS, GRAPH, REPO
from transports.websocket.server import VoiceServer

pytest.importorskip("aiortc", reason="the webrtc extra is not installed")
pytestmark = pytest.mark.slow

WAIT_MS = 40_000
RTC_FLAGS = [*FLAGS, "--allow-loopback-in-peer-connection"]
HEARD = 0.01
"""RMS over which the page's meter counts the bot as heard."""
QUIET = 0.01
"""Peak under which the page's meter counts the bot as silent."""
CALM = ["server.max_cpu=1.0", "server.max_loop_lag=5.0", "server.load_window=3600"]
"""Admission that a busy test machine's CPU never closes (the figures need a quarter of the window)."""
PARROT_GRAPH = GRAPH.replace(
    "max_sessions: 2}", "max_sessions: 2, max_cpu: 1.0, max_loop_lag: 5.0, load_window: 3600}"
)


class LongParrot(Processor):
    """Answers with "You said: <it>" four times over: a reply long enough to talk over."""

    handles: ClassVar[tuple[type[Frame], ...]] = (UserTextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (LLMTextFrame, UserTextFrame)

    async def process(self, frame: Any) -> None:
        await self.push(frame)
        await self.push(LLMResponseStartFrame())
        for _ in range(4):
            await self.push(LLMTextFrame(text=f"You said: {frame.text.strip()} "))
        await self.push(LLMResponseEndFrame())


def mic_file(tmp_path: Path, *parts: tuple[str, float]) -> Path:
    """A 48 kHz fake-microphone WAV: each sentence after its seconds of silence, then 2 s of silence."""
    rate = 48000
    pieces: list[np.ndarray] = []
    for n, (sentence, pause) in enumerate(parts):
        spoken, _ = read_wav(espeak(sentence, tmp_path / f"sentence{n}.wav", rate=rate))
        pieces += [silence(pause, rate), spoken]
    return write_wav(tmp_path / "mic.wav", np.concatenate([*pieces, silence(2.0, rate)]), rate)


@asynccontextmanager
async def served(text: str, tmp_path: Path) -> AsyncIterator[VoiceServer]:
    compiled, problems = config.compile_text(text.replace("RECORDINGS", str(tmp_path / "recordings")), "<t>")
    assert compiled is not None and not problems, problems
    voice = VoiceServer(compiled)
    await voice.start()
    try:
        yield voice
    finally:
        await voice.stop()


@asynccontextmanager
async def chromium(tmp_path: Path, wav: Path, flags: list[str] = RTC_FLAGS) -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), "chromium is missing: run ./setup.sh (apt-get install chromium)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*flags, f"--use-file-for-fake-audio-capture={wav}%noloop"],
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    await page.goto(url)
    return page, problems


async def until(page: Page, condition: str, timeout_ms: int = WAIT_MS) -> None:
    """Wait for a condition on the page, showing what the page saw if it never holds."""
    try:
        await page.wait_for_function(condition, timeout=timeout_ms)
    except Exception as error:
        seen = await page.evaluate("JSON.stringify({...window.voxgraph, meters: undefined})")
        raise AssertionError(f"page never reached {condition!r}; it saw {seen}") from error


async def bot_levels(page: Page) -> np.ndarray:
    """The page's meter of the bot's voice: rows of (page clock ms, rms, peak)."""
    rows = await page.evaluate(
        "window.voxgraph.meters.bot.levels.map(([t, rms, peak]) => [window.voxgraph.wallTime(t), rms, peak])"
    )
    return np.array(rows, dtype=float).reshape(-1, 3)


def heard_seconds(levels: np.ndarray) -> float:
    """Seconds of the meter's reports in which the bot was heard."""
    if len(levels) < 2:
        return 0.0
    step = float(np.median(np.diff(levels[:, 0]))) / 1000
    return float((levels[:, 1] > HEARD).sum()) * step


def voiced_seconds(path: Path) -> float:
    """Seconds of 10 ms windows of a WAV over the same level."""
    samples, rate = read_wav(path)
    hop = rate // 100
    windows = samples[: len(samples) // hop * hop].astype(np.float64).reshape(-1, hop) / 32768
    return float((np.sqrt((windows**2).mean(axis=1)) > HEARD).sum()) / 100


async def test_the_offline_assistant_answers_over_webrtc(tmp_path: Path) -> None:
    """configs/assistant.yaml as shipped, the page as shipped (WebRTC, echo cancellation, noise
    suppression, AGC): the words appear, the reply is heard for as long as the bot spoke, it is saved."""
    wav = mic_file(tmp_path, ("What is the weather like in Paris today?", 1.0))
    recordings = tmp_path / "recordings"
    compiled, problems = config.compile_config(
        REPO / "configs" / "assistant.yaml", ["server.port=0", f"recorder.directory={recordings}", *CALM]
    )
    assert compiled is not None and not problems, problems
    voice = VoiceServer(compiled)
    await voice.start()
    try:
        async with chromium(tmp_path, wav) as browser:
            page, errors = await open_page(browser, voice.url)
            await page.click("#start")
            await until(page, "window.voxgraph.transport !== null")
            await until(page, "window.voxgraph.transcripts.length > 0")
            assert await page.evaluate("window.voxgraph.transcripts[0]") in await page.inner_text("#log")
            await until(page, "window.voxgraph.replies.length > 0")
            await until(page, "window.voxgraph.status === 'listening'")  # the reply has been sent
            await page.wait_for_timeout(600)  # and the last of it has played (the browser's buffer)
            state = await page.evaluate("JSON.parse(JSON.stringify({...window.voxgraph, meters: undefined}))")
            levels = await bot_levels(page)
            link = await page.inner_text("#link")
            await page.click("#start")
            await until(page, "window.voxgraph.status === 'ended'")
            await page.wait_for_selector(".conv-links a", timeout=WAIT_MS)
            assert not errors, errors
    finally:
        await voice.stop()
    assert state["transport"] == "webrtc" and state["fallback"] is None, state
    assert "paris" in state["transcripts"][0].lower(), state["transcripts"]
    assert state["replies"][0].strip()
    assert state["botAudioBytes"] == 0  # the voice came as a track, not as websocket PCM
    assert state["link"] and state["link"]["rtt_ms"] is not None, state["link"]
    assert "RTT" in link and "loss" in link, link
    session = recordings / state["sessionId"]
    spoken = voiced_seconds(session / "bot.wav")
    heard = heard_seconds(levels)
    print(f"\nbot spoke {spoken:.2f} s, the page heard {heard:.2f} s; set-up {marks(state)}")
    assert spoken > 0.5
    assert 0.8 * spoken < heard < 1.2 * spoken + 0.2, (spoken, heard)
    saved = json.loads((session / "transcript.json").read_text())
    assert [m["role"] for m in saved["messages"][:2]] == ["user", "assistant"]
    assert (session / "user.wav").stat().st_size > 16000 * 2  # over a second of the user


def marks(state: dict[str, Any]) -> str:
    """Set-up times from the page's Start, as text."""
    start = state["marks"]["start"]
    return ", ".join(f"{name} +{at - start:.0f} ms" for name, at in state["marks"].items() if name != "start")


BARGE_GRAPH = PARROT_GRAPH.replace("tests.test_browser:Parrot", "tests.test_browser_webrtc:LongParrot")


async def test_talking_over_the_bot_silences_it_on_the_page(tmp_path: Path) -> None:
    """The second sentence starts while the long reply plays: the page falls silent soon after the
    server's ``interrupted`` (the server drops what it had queued; the page mutes what it had)."""
    wav = mic_file(
        tmp_path, ("What is the weather like in Paris today?", 1.0), ("Stop, and tell me about Rome.", 4.5)
    )
    async with served(BARGE_GRAPH, tmp_path) as voice, chromium(tmp_path, wav) as browser:
        page, problems = await open_page(browser, voice.url + "?raw=1")
        await page.click("#start")
        await until(page, "window.voxgraph.events.some((e) => e.type === 'interrupted')")
        interrupted = await page.evaluate("window.voxgraph.events.find((e) => e.type === 'interrupted').at")
        await page.wait_for_timeout(1000)
        levels = await bot_levels(page)
        assert not problems, problems
    before = levels[(levels[:, 0] > interrupted - 1000) & (levels[:, 0] < interrupted)]
    assert (before[:, 1] > HEARD).any(), "the bot was not speaking when it was interrupted"
    after = levels[(levels[:, 0] >= interrupted) & (levels[:, 0] < interrupted + 1000)]
    loud = after[after[:, 2] >= QUIET]
    quiet_at = float(loud[-1, 0]) if len(loud) else interrupted
    print(f"\npage silent {quiet_at - interrupted:.0f} ms after the interruption reached it")
    assert quiet_at - interrupted < 300  # generous for a busy 2-core CI machine


async def test_the_page_falls_back_to_the_websocket_when_the_server_does_not_take_webrtc(
    tmp_path: Path,
) -> None:
    """An offer answered 404 (a server without WebRTC): the conversation goes over ``/ws`` instead."""
    wav = mic_file(tmp_path, ("Hello.", 1.0))
    async with served(PARROT_GRAPH, tmp_path) as voice, chromium(tmp_path, wav) as browser:
        page, problems = await open_page(browser, voice.url)
        await page.route("**/api/offer", lambda route: route.fulfill(status=404, body="Not Found"))
        await typed_turn(page)
        assert await page.evaluate("window.voxgraph.transport") == "websocket"
        assert "does not take WebRTC" in await page.evaluate("window.voxgraph.fallback")
        assert "using the websocket" in await page.inner_text("#log")
        assert not problems, problems


async def test_the_page_falls_back_to_the_websocket_when_webrtc_does_not_connect(tmp_path: Path) -> None:
    """Offer and answer stripped of their candidates: ICE never connects, and within seconds the page
    holds the conversation over ``/ws``; the server frees the unconnected peer on its own."""
    wav = mic_file(tmp_path, ("Hello.", 1.0))

    async def unreachable(route: Route) -> None:
        offer = json.loads(route.request.post_data or "{}")
        offer["sdp"] = without_candidates(offer["sdp"])
        response = await route.fetch(post_data=json.dumps(offer))
        answer = await response.json()
        answer["sdp"] = without_candidates(answer["sdp"])
        await route.fulfill(response=response, json=answer)

    async with served(PARROT_GRAPH, tmp_path) as voice, chromium(tmp_path, wav) as browser:
        page, problems = await open_page(browser, voice.url)
        await page.route("**/api/offer", unreachable)
        started = time.monotonic()
        await typed_turn(page)
        print(f"\nfell back and answered in {time.monotonic() - started:.1f} s")
        assert await page.evaluate("window.voxgraph.transport") == "websocket"
        assert "no connection" in await page.evaluate("window.voxgraph.fallback")
        await wait_for(lambda: sessions(voice, 1), 20, "the unconnected peer was never freed")
        assert not problems, problems


def without_candidates(sdp: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=candidate"))


async def test_a_malformed_data_channel_message_gets_an_error_and_the_call_goes_on(tmp_path: Path) -> None:
    wav = mic_file(tmp_path, ("Hello.", 1.0))
    async with served(PARROT_GRAPH, tmp_path) as voice, chromium(tmp_path, wav) as browser:
        page, problems = await open_page(browser, voice.url)
        await page.click("#start")
        await until(page, "window.voxgraph.status === 'listening'")
        assert await page.evaluate("window.voxgraph.transport") == "webrtc"
        await page.evaluate("state.link.channel.send('{not json'); state.link.channel.send('[1, 2]')")
        await until(page, "window.voxgraph.errors.length >= 2")
        await typed_turn(page)
        await until(page, "window.voxgraph.link !== null && window.voxgraph.link.rtt_ms !== null")
        assert not problems, problems


async def test_a_killed_browser_ends_its_conversation_within_seconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No goodbye, no ICE consent timeout (~30 s): the heartbeat stops, the server notices within
    seconds, ends the graph and saves the conversation."""
    caplog.set_level(logging.INFO, logger="transports.webrtc")
    wav = mic_file(tmp_path, ("Hello.", 1.0))
    async with served(PARROT_GRAPH, tmp_path) as voice, chromium(tmp_path, wav) as browser:
        page, _ = await open_page(browser, voice.url)
        await typed_turn(page)
        assert await page.evaluate("window.voxgraph.transport") == "webrtc"
        session = await page.evaluate("window.voxgraph.sessionId")
        assert sessions(voice, 1)
        killed = time.time()
        for pid in browser_pids():
            os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: sessions(voice, 0), 20, "the server never noticed the browser was gone")
        ended = time.time() - killed
    gone = [r.created - killed for r in caplog.records if "no heartbeat" in r.getMessage()]
    noticed = gone[0] if gone else float("nan")
    print(f"\nbrowser killed: noticed after {noticed:.1f} s, graph ended after {ended:.1f} s")
    assert gone and gone[0] < 6.0, [r.getMessage() for r in caplog.records]
    assert (tmp_path / "recordings" / session / "transcript.json").exists()


async def typed_turn(page: Page) -> None:
    """Type a message (starting the conversation) and wait for the parroted reply."""
    await page.fill("#text", "hello there")
    await page.press("#text", "Enter")
    await until(page, "window.voxgraph.replies.some((r) => r.includes('hello there'))")


def sessions(voice: VoiceServer, count: int) -> bool:
    return int(voice.load()["sessions"]) == count


async def wait_for(condition: Callable[[], bool], seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        await asyncio.sleep(0.05)


def browser_pids() -> list[int]:
    """The Chromium processes this test process started (through Playwright's driver)."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            names[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if "chrom" in names.get(pid, ""):
            found.append(pid)
    assert found, "no Chromium process found among this process's descendants"
    return found
