"""Voice-to-voice latency of the offline assistant, stage by stage, on real human speech.

Runs ``configs/assistant-file.yaml`` in real time (the caller speaks at wall-clock speed and the bot's
audio is paced as a speaker would play it) with LibriVox and spoken-command clips from Debian's
pocketsphinx-testdata as the user's turns, and times every turn from the true end of the user's
speech to the first bot audio, split into:

* ``vad_hangover``: true end of speech → the VAD's stop (its ``stop_secs`` of silence);
* ``stt``: the stop → the turn's final transcript;
* ``llm_first_token``: transcript → first LLM text;
* ``tts_first_audio``: first LLM text → first synthesised audio (includes waiting for a sentence);
* ``playout``: first audio → the transport starts playing it;
* ``voice_to_voice``: the whole: true end of speech → bot audio playing.

A second run barges in: each next turn starts 1 s into the bot's answer, and ``barge_in`` is the time
from the true start of the user's speech to the bot falling silent.

Run from the repo root: ``python benchmarks/voice_to_voice.py`` (10 turns + 5 barge-ins, ~3 min) or
``--quick`` (3 + 2). JSON lines on stdout, a table and progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import load
from pipeline.frames import (
    BotAudioFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    Frame,
    InterruptionFrame,
    LLMTextFrame,
    TranscriptFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.metrics import percentile
from pipeline.observers import Observer
from pipeline.processor import Processor

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "assistant-file.yaml"
TESTDATA = Path("/usr/share/pocketsphinx/test/data")
CLIPS = [
    *(
        TESTDATA / "librivox" / f"sense_and_sensibility_01_austen_64kb-0{n}.wav"
        for n in (870, 880, 890, 920, 930)
    ),
    *(TESTDATA / "cards" / f"00{n}.wav" for n in range(1, 6)),
]
STAGES = ("vad_hangover", "stt", "llm_first_token", "tts_first_audio", "playout", "voice_to_voice")


@dataclass
class Turn:
    """Wall-clock (``time.monotonic``) marks of one user turn and its answer."""

    speech_start: float | None = None
    speech_end: float | None = None
    vad_stop: float | None = None
    transcript: float | None = None
    first_token: float | None = None
    first_audio: float | None = None
    bot_started: float | None = None
    bot_stopped: float | None = None
    interrupted: bool = False
    text: str = ""

    def stages(self) -> dict[str, float] | None:
        marks = [self.speech_end, self.vad_stop, self.transcript, self.first_token, self.first_audio]
        if any(m is None for m in marks) or self.bot_started is None:
            return None
        end, stop, text, token, audio = marks  # type: ignore[misc]
        return {
            "vad_hangover": stop - end,
            "stt": text - stop,
            "llm_first_token": token - text,
            "tts_first_audio": audio - token,
            "playout": self.bot_started - audio,
            "voice_to_voice": self.bot_started - end,
        }


@dataclass
class Timeline(Observer):
    """Marks the frames that bound each stage, as the nodes of the assistant push them."""

    turns: list[Turn] = field(default_factory=list)

    def on_push(
        self, source: Processor, target: Processor | None, frame: Frame, direction: Direction
    ) -> None:
        # The assistant is a chain: each push has one target, so each frame is seen once.
        now = time.monotonic()
        name = source.name
        if name == "vad" and isinstance(frame, UserStartedSpeakingFrame):
            self.turns.append(Turn(speech_start=frame.at))
        elif not self.turns:
            return
        turn = self.turns[-1]
        if name == "vad" and isinstance(frame, UserStoppedSpeakingFrame):
            turn.speech_end, turn.vad_stop = frame.at, now
        elif name == "turns" and isinstance(frame, TranscriptFrame):
            turn.transcript, turn.text = now, frame.text
        elif name == "turns" and isinstance(frame, InterruptionFrame):
            if len(self.turns) > 1:
                self.turns[-2].interrupted = True
        elif name == "llm" and isinstance(frame, LLMTextFrame) and turn.first_token is None:
            turn.first_token = now if turn.transcript else None
        elif name == "tts" and isinstance(frame, BotAudioFrame) and turn.first_audio is None:
            turn.first_audio = now if turn.first_token else None
        elif name == "speaker" and isinstance(frame, BotStartedSpeakingFrame) and turn.bot_started is None:
            turn.bot_started = now if turn.first_audio else None
        elif name == "speaker" and isinstance(frame, BotStoppedSpeakingFrame):
            for earlier in reversed(self.turns):
                if earlier.bot_started is not None and earlier.bot_stopped is None:
                    earlier.bot_stopped = now
                    break


async def conversation(clips: list[Path], out: Path, barge_in_after: float | None) -> Timeline:
    """Run the headless assistant in real time over ``clips``; return the marks of every turn."""
    paths = "[" + ", ".join(str(c) for c in clips) + "]"
    overrides = [
        f"caller.paths={paths}",
        "caller.realtime=true",
        "caller.pause=1.0",
        "speaker.realtime=true",
        f"speaker.path={out / 'reply.wav'}",
        f"recorder.directory={out / 'recordings'}",
    ]
    if barge_in_after is not None:
        overrides.append(f"caller.barge_in_after={barge_in_after}")
    graph = load(CONFIG, overrides)
    timeline = Timeline()
    graph.add_observer(timeline)
    await graph.run()
    return timeline


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * percentile(ordered, 95), 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 turns and 2 barge-ins")
    parser.add_argument("--turns", type=int, default=10, help="user turns in the latency run")
    parser.add_argument("--barge-ins", type=int, default=5, help="barge-ins in the second run")
    args = parser.parse_args()
    turns, barge_ins = (3, 2) if args.quick else (args.turns, args.barge_ins)
    missing = [c for c in CLIPS if not c.exists()]
    if missing:
        sys.exit(f"missing {missing[0]}: run ./setup.sh (it installs pocketsphinx-testdata)")
    clips = [CLIPS[i % len(CLIPS)] for i in range(turns)]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"[v2v] {turns} turns in real time (models load first)…", file=sys.stderr, flush=True)
        timeline = asyncio.run(conversation(clips, Path(tmp), None))
        rows = [s for t in timeline.turns if (s := t.stages())]
        answered = len(rows)
        print(f"[v2v] {answered}/{len(timeline.turns)} turns answered; barge-in run…", file=sys.stderr)
        barge = asyncio.run(conversation(clips[: barge_ins + 1], Path(tmp), 1.0))
    barge_in = [
        prev.bot_stopped - nxt.speech_start
        for prev, nxt in zip(barge.turns, barge.turns[1:], strict=False)
        if prev.interrupted and prev.bot_stopped is not None and nxt.speech_start is not None
    ]
    print(f"{'stage':<18}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}", file=sys.stderr)
    for stage in STAGES:
        values = [r[stage] for r in rows]
        if not values:
            continue
        stats = summary(values)
        emit({"benchmark": "voice_to_voice", "stage": stage, **stats})
        print(f"{stage:<18}{stats['p50_ms']:>10}{stats['p95_ms']:>10}{stats['max_ms']:>10}", file=sys.stderr)
    if barge_in:
        stats = summary(barge_in)
        emit({"benchmark": "voice_to_voice", "stage": "barge_in", **stats})
        print(
            f"{'barge_in':<18}{stats['p50_ms']:>10}{stats['p95_ms']:>10}{stats['max_ms']:>10}",
            file=sys.stderr,
        )
    emit(
        {
            "benchmark": "voice_to_voice",
            "turns": len(timeline.turns),
            "answered": answered,
            "barge_ins_measured": len(barge_in),
            "texts": [t.text for t in timeline.turns],
        }
    )


if __name__ == "__main__":
    main()
