"""``python -m pipeline bench``: the turn marks, the graph rewiring, the quiet-machine check, and the
whole benchmark on configs/assistant-cloud.yaml against local fakes of its three services (real SDKs,
real time), whose HTML report is opened in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from pipeline import cli
from pipeline.bench.machine import MachineSample, quietness
from pipeline.bench.rewire import BenchGraphError, endpoints, rewire
from pipeline.bench.timeline import Timeline
from pipeline.config import parse, parse_text
from pipeline.frames import (
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMTextFrame,
    TranscriptFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.processor import Processor
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.speech import LIBRIVOX, librivox

ROOT = Path(__file__).resolve().parent.parent
CLOUD = ROOT / "configs" / "assistant-cloud.yaml"
ASSISTANT = ROOT / "configs" / "assistant.yaml"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CLIP = "sense_and_sensibility_01_austen_64kb-0880.wav"
TIMEOUT = 60.0


class Node(Processor):
    """A stand-in whose name is all the timeline looks at."""


class Script:
    """Pushes frames into a ``Timeline`` at chosen ``time.monotonic`` moments."""

    def __init__(self, timeline: Timeline, monkeypatch: pytest.MonkeyPatch) -> None:
        self.timeline = timeline
        self.now = 100.0
        self.nodes = {n: Node(name=n) for n in ("vad", "stt", "turns", "llm", "tts", "speaker")}
        monkeypatch.setattr("pipeline.bench.timeline.time.monotonic", lambda: self.now)

    def push(self, at: float, source: str, frame: Frame, target: str | None = None) -> None:
        self.now = at
        node = self.nodes[target] if target else None
        self.timeline.on_push(self.nodes[source], node, frame, "downstream")  # type: ignore[arg-type]

    def answer(self, start: float, end: float, stop: float, text: float, token: float, audio: float) -> None:
        """One turn, each frame also passed along by the next node as a real chain does."""
        self.push(start + 0.15, "vad", UserStartedSpeakingFrame(at=start), "stt")
        self.push(start + 0.15, "stt", UserStartedSpeakingFrame(at=start), "turns")
        self.push(stop, "vad", UserStoppedSpeakingFrame(at=end), "stt")
        self.push(stop, "stt", UserStoppedSpeakingFrame(at=end), "turns")
        self.push(text - 0.01, "stt", TranscriptFrame(text="hello there"), "turns")
        self.push(text, "turns", TranscriptFrame(text="hello there"), "llm")
        self.push(token, "llm", LLMTextFrame(text="Hi"), "tts")
        self.push(audio, "tts", BotAudioFrame(pcm=bytes(320), sample_rate=16000, channels=1), "speaker")
        self.push(audio + 0.002, "speaker", BotStartedSpeakingFrame(), "tts")
        self.push(audio + 0.002, "tts", BotStartedSpeakingFrame(), "llm")  # passed upstream


def test_each_stage_runs_from_one_mark_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    answered: list[int] = []
    timeline = Timeline(on_answer=lambda index, turn: answered.append(index))
    script = Script(timeline, monkeypatch)
    script.answer(start=1.0, end=3.0, stop=3.4, text=3.5, token=3.7, audio=4.0)
    script.push(5.0, "speaker", BotStoppedSpeakingFrame(), "tts")
    script.push(5.0, "tts", BotStoppedSpeakingFrame(), "llm")  # the same frame passed on: not a new stop

    (turn,) = timeline.turns
    assert answered == [0] and turn.text == "hello there" and turn.bot_stopped == 5.0
    stages = turn.stages()
    assert stages is not None
    assert {k: round(v, 3) for k, v in stages.items()} == {
        "vad_hangover": 0.4,
        "stt": 0.1,
        "llm_first_token": 0.2,
        "tts_first_audio": 0.3,
        "playout": 0.002,
        "voice_to_voice": 1.002,
    }


def test_a_reply_begun_before_the_final_takes_no_negative_time(monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = Timeline()
    script = Script(timeline, monkeypatch)
    script.answer(start=1.0, end=3.0, stop=3.4, text=3.6, token=3.5, audio=3.8)  # token before final
    stages = timeline.turns[0].stages()
    assert stages is not None and min(stages.values()) >= 0
    assert round(stages["voice_to_voice"], 3) == 0.802


def test_a_pause_without_an_answer_stays_in_the_same_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = Timeline()
    script = Script(timeline, monkeypatch)
    script.push(1.15, "vad", UserStartedSpeakingFrame(at=1.0), "stt")
    script.push(2.4, "vad", UserStoppedSpeakingFrame(at=2.0), "stt")
    script.push(2.5, "llm", LLMTextFrame(text="early"), "tts")  # a reply at the pause, dropped unheard
    script.answer(start=2.6, end=4.0, stop=4.4, text=4.5, token=4.6, audio=4.9)
    (turn,) = timeline.turns
    assert turn.speech_start == 1.0 and turn.first_token == 4.6


def test_a_barge_in_runs_from_the_user_speaking_to_the_bot_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = Timeline()
    script = Script(timeline, monkeypatch)
    script.answer(start=1.0, end=3.0, stop=3.4, text=3.5, token=3.7, audio=4.0)
    script.push(5.15, "vad", UserStartedSpeakingFrame(at=5.0), "stt")
    script.push(5.16, "turns", InterruptionFrame(), "llm")
    script.push(5.17, "llm", InterruptionFrame(), "tts")
    script.push(5.18, "speaker", BotStoppedSpeakingFrame(), "tts")
    assert len(timeline.turns) == 2 and timeline.turns[0].interrupted
    assert [round(b, 3) for b in timeline.barge_ins()] == [0.18]
    (stages,) = timeline.barge_in_stages()  # where the time went
    assert {k: round(v, 3) for k, v in stages.items()} == {
        "vad_start": 0.15,
        "interruption": 0.01,
        "bot_silent": 0.02,
    }


def test_the_input_and_output_transports_become_files(tmp_path: Path) -> None:
    spec, problems = parse(ASSISTANT)
    assert spec is not None and not problems
    assert endpoints(spec) == ("mic", "speaker")
    clip = librivox(CLIP)
    rewire(spec, [clip, clip], tmp_path, barge_in_after=1.0)
    caller, speaker = spec.nodes["mic"], spec.nodes["speaker"]
    assert caller.type == "file.turns" and caller.params["paths"] == [str(clip)] * 2
    assert caller.params["realtime"] is True and caller.params["barge_in_after"] == 1.0
    assert speaker.type == "file.output" and speaker.params["realtime"] is True
    assert spec.nodes["recorder"].params["directory"] == str(tmp_path / "recordings")
    assert spec.server is None and spec.nodes["llm"].type == "llm.local"  # the rest is untouched


def test_a_graph_that_is_not_one_conversation_is_refused() -> None:
    text = """
name: two-inputs
nodes:
  a: {type: tone}
  b: {type: tone}
  out: {type: file.output, path: x.wav}
edges:
  - a -> out
  - b -> out
"""
    spec, _ = parse_text(text)
    assert spec is not None
    with pytest.raises(BenchGraphError, match=r"inputs \['a', 'b'\]"):
        endpoints(spec)


def test_a_busy_machine_is_flagged() -> None:
    cpus = os.cpu_count() or 1
    before = MachineSample(0.0, (0.1, 0.1, 0.1), busy=0, steal=0, total=0, own_cpu=0.0)
    quiet = quietness(before, MachineSample(10.0, (0.2, 0.1, 0.1), 50, 0, 1000 * cpus, 0.5))
    assert quiet.quiet and quiet.warnings == []
    busy_before = MachineSample(0.0, (4.0 * cpus, 1, 1), busy=0, steal=0, total=0, own_cpu=0.0)
    busy = quietness(busy_before, MachineSample(10.0, (1, 1, 1), 600 * cpus, 100 * cpus, 1000 * cpus, 0.0))
    assert not busy.quiet and busy.steal == 0.1 and busy.others >= 0.6
    assert [w.split(" ")[1] for w in busy.warnings] == ["machine", "hypervisor", "processes"]


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeAssemblyAI, FakeGemini, FakeOpenAI]]:
    words = LIBRIVOX[CLIP].split() * 40  # every turn recognises words, however many turns
    async with (
        FakeAssemblyAI(api_key="aai-fake-key", words=words, ms_per_word=80, silence_rms=200.0) as stt,
        FakeGemini(reply="Sure. That sounds like a fine idea to me, and here is a little more.") as llm,
        FakeOpenAI(seconds_per_char=0.05) as tts,
    ):
        yield stt, llm, tts


@pytest.mark.slow
async def test_bench_reports_json_and_a_waterfall_that_chromium_shows(
    fakes: tuple[FakeAssemblyAI, FakeGemini, FakeOpenAI], tmp_path: Path
) -> None:
    stt, llm, tts = fakes
    env = {
        **os.environ,
        "ASSEMBLYAI_API_KEY": stt.api_key,
        "ASSEMBLYAI_API_HOST": stt.ws_url,
        "GEMINI_API_KEY": llm.api_key,
        "GEMINI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": tts.api_key,
        "OPENAI_BASE_URL": tts.base_url,
    }
    report, page = tmp_path / "bench.json", tmp_path / "bench.html"
    command = [sys.executable, "-m", "pipeline", "bench", str(CLOUD), "--speech", str(librivox(CLIP))]
    command += ["--turns", "2", "--barge-ins", "1", "--json", str(report), "--html", str(page)]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 0, err.decode()
    assert "[bench] turn 1/2:" in err.decode() and "voice to voice" in out.decode()

    doc = json.loads(report.read_text())
    assert doc["turns"] == 2 and doc["answered"] == 2 and doc["barge_ins_measured"] == 1
    assert set(doc["stages"]) == {
        "vad_hangover", "stt", "llm_first_token", "tts_first_audio", "playout", "voice_to_voice", "barge_in",
        "vad_start", "interruption", "bot_silent",
    }  # fmt: skip
    barge_in = doc["stages"]["barge_in"]["p50_ms"]  # one barge-in: its parts add up to it
    parts = sum(doc["stages"][s]["p50_ms"] for s in ("vad_start", "interruption", "bot_silent"))
    assert abs(parts - barge_in) < 0.5
    assert doc["later_turns_voice_to_voice"]["count"] == 1 and doc["first_turn_voice_to_voice_ms"] > 0
    assert doc["first_speech_again_voice_to_voice"]["count"] == 1  # one clip: turn 2 replays turn 1's
    assert doc["head_start"] == {  # the cloud assistant prepares no reply before its turn ends
        "preemptive_replies_used": 0, "preemptive_replies_dropped": 0, "first_pieces_made_ahead": 0,
    }  # fmt: skip
    for turn in doc["per_turn"]:
        parts = sum(turn[f"{s}_ms"] for s in ("vad_hangover", "stt", "llm_first_token", "tts_first_audio"))
        assert abs(parts + turn["playout_ms"] - turn["voice_to_voice_ms"]) < 0.5
    assert 0 < doc["stages"]["barge_in"]["p50_ms"] < 1000
    assert {"load_before", "steal", "others", "warnings", "quiet"} <= set(doc["machine"])
    assert not (tmp_path / "recordings").exists()  # the recorder wrote into the scratch folder

    html = page.read_text()
    tags = Tags()
    tags.feed(html)
    assert tags.count("svg") == 1 and tags.count("rect") == 2 * 5 and tags.count("table") == 1
    assert not [a for a in tags.links if not a.startswith("http://www.w3.org/")]  # nothing fetched
    await show(page)


class Tags(HTMLParser):
    """Counts start tags and collects every URL an attribute names."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        self.links += [v for k, v in attrs if v and (k in ("src", "href", "xmlns") or "://" in v)]

    def count(self, tag: str) -> int:
        return self.seen.count(tag)


async def show(page: Path) -> None:
    """Open the report offline in headless Chromium; the chart is drawn; a screenshot is kept."""
    assert CHROMIUM.exists(), "chromium is missing: run ./setup.sh (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=page.parent), executable_path=str(CHROMIUM), headless=True, offline=True
        )
        try:
            view = browser.pages[0] if browser.pages else await browser.new_page()
            requests: list[str] = []
            view.on("request", lambda r: requests.append(r.url))
            await view.goto(page.as_uri())
            box: Any = await view.locator("#waterfall").bounding_box()
            assert box and box["width"] > 300 and box["height"] > 40
            bars = await view.locator("#waterfall rect.stage").count()
            assert bars == 10
            await view.screenshot(path=str(ARTIFACTS / "bench.png"), full_page=True)
        finally:
            await browser.close()
    assert requests == [page.as_uri()]


def test_a_graph_with_nothing_to_time_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "vad-only.yaml"
    config.write_text(
        "name: vad-only\nnodes:\n  mic: {type: file.input, path: x.wav}\n  vad: {type: vad.webrtc}\n"
        f"  out: {{type: file.output, path: {tmp_path / 'out.wav'}}}\nedges:\n  - mic -> vad -> out\n"
    )
    assert cli.main(["bench", str(config), "--speech", str(librivox(CLIP)), "--turns", "1"]) == 2
    assert "nothing to time: it has no LLM (llm.*) and no TTS (tts.*)" in capsys.readouterr().err


def test_missing_speech_files_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nothing.wav"
    assert cli.main(["bench", str(ASSISTANT), "--speech", str(missing)]) == 2
    assert f"no speech file {missing}" in capsys.readouterr().err
