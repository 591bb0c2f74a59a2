"""Voice-to-voice latency of the offline assistant, stage by stage, on real human speech.

A thin caller of ``python -m pipeline bench`` (``pipeline/bench``), kept for its JSON-lines output
and the names other benchmarks share (``CLIPS``, ``summary``, ``emit``): it runs
``configs/assistant.yaml`` (or ``--config``) in real time over LibriVox and spoken-command clips
from Debian's pocketsphinx-testdata, and times each turn from the end of the user's speech to the
bot's audio playing (VAD hangover, STT final, LLM first token, TTS first audio, playout), then a
second run barges in 1 s into each answer (split into the VAD's start, the interruption and the bot
falling silent). The first turn is reported beside the later ones: a cold engine shows there.

Run from the repo root: ``python benchmarks/voice_to_voice.py`` (10 turns + 5 barge-ins, ~3 min) or
``--quick`` (3 + 2). JSON lines on stdout; the table, progress and any busy-machine warning on
stderr. ``python -m pipeline bench`` gives the same numbers plus a JSON file and an HTML report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.bench import DEFAULT_SPEECH, BenchPlan, measure
from pipeline.bench.report import summary, table

__all__ = ["CLIPS", "emit", "summary"]

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "assistant.yaml"
CLIPS = DEFAULT_SPEECH


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 turns and 2 barge-ins")
    parser.add_argument("--turns", type=int, default=10, help="user turns in the latency run")
    parser.add_argument("--barge-ins", type=int, default=5, help="barge-ins in the second run")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the conversation graph to time")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.PARAM=VALUE")
    args = parser.parse_args()
    turns, barge_ins = (3, 2) if args.quick else (args.turns, args.barge_ins)
    missing = [c for c in CLIPS if not c.exists()]
    if missing:
        sys.exit(f"missing {missing[0]}: run ./setup.sh (it installs pocketsphinx-testdata)")
    results = asyncio.run(measure(BenchPlan(args.config, args.overrides, turns, barge_ins)))
    print(table(results), file=sys.stderr)
    doc = results.document()
    for stage, stats in doc["stages"].items():
        emit({"benchmark": "voice_to_voice", "stage": stage, **stats})
    emit(
        {
            "benchmark": "voice_to_voice",
            "config": doc["config"],
            "turns": doc["turns"],
            "answered": doc["answered"],
            "barge_ins_measured": doc["barge_ins_measured"],
            "first_turn_voice_to_voice_ms": doc["first_turn_voice_to_voice_ms"],
            "later_turns_voice_to_voice": doc["later_turns_voice_to_voice"],
            "texts": [t["text"] for t in doc["per_turn"]],
            "machine": doc["machine"],
        }
    )


if __name__ == "__main__":
    main()
