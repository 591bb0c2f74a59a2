"""Run a conversation graph over spoken turns in real time and collect every turn's marks."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.bench.machine import quietness, sample
from pipeline.bench.report import Results
from pipeline.bench.rewire import check_conversation, rewire
from pipeline.bench.timeline import Timeline, Turn
from pipeline.config import parse
from pipeline.config.build import build
from pipeline.config.interpolate import hide_secrets
from pipeline.errors import ValidationError

__all__ = ["BARGE_IN_AFTER", "DEFAULT_SPEECH", "BenchPlan", "measure"]

TESTDATA = Path("/usr/share/pocketsphinx/test/data")
DEFAULT_SPEECH = [
    *(
        TESTDATA / "librivox" / f"sense_and_sensibility_01_austen_64kb-0{n}.wav"
        for n in (870, 880, 890, 920, 930)
    ),
    *(TESTDATA / "cards" / f"00{n}.wav" for n in range(1, 6)),
]
"""Real human speech from Debian's pocketsphinx-testdata (``./setup.sh`` installs it): five LibriVox
sentences and five spoken commands."""
BARGE_IN_AFTER = 1.0
"""Seconds into the bot's answer at which the next turn barges in."""
HEAD_START = {
    "preemptive_replies_used": "preemptive_used",
    "preemptive_replies_dropped": "preemptive_dropped",
    "first_pieces_made_ahead": "pieces_ahead_used",
}
"""Counters the LLM and TTS nodes keep of replies started before their turn ended (report key: attribute)."""


@dataclass(frozen=True, slots=True)
class BenchPlan:
    """What to run: the config (with ``--set`` overrides), how many turns and barge-ins, which speech."""

    config: Path
    overrides: Sequence[str] = ()
    turns: int = 10
    barge_ins: int = 5
    speech: Sequence[Path] = tuple(DEFAULT_SPEECH)
    env: Mapping[str, str] | None = None
    """Environment for ``${VAR}`` in the config (None: this process's)."""

    def clips(self, count: int) -> list[Path]:
        return [self.speech[i % len(self.speech)] for i in range(count)]


async def measure(plan: BenchPlan, progress: bool = True) -> Results:
    """A latency run of ``plan.turns`` turns, then a barge-in run of ``plan.barge_ins`` barge-ins."""
    before = sample()
    timeline = Timeline()
    barge = Timeline()
    head_start: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="voxgraph-bench-") as scratch:
        if plan.turns:
            _say(progress, f"{plan.turns} turns in real time (the models load first)…")
            timeline.on_answer = _reporter(progress, "turn", plan.turns)
            head_start = await _conversation(
                plan, plan.clips(plan.turns), Path(scratch) / "turns", None, timeline
            )
        if plan.barge_ins:
            _say(progress, f"{plan.barge_ins} barge-ins, each {BARGE_IN_AFTER:g} s into the answer…")
            barge.on_answer = _reporter(progress, "barge-in turn", plan.barge_ins + 1)
            clips = plan.clips(plan.barge_ins + 1)
            await _conversation(plan, clips, Path(scratch) / "barge-ins", BARGE_IN_AFTER, barge)
    return Results(
        config=str(plan.config),
        clips=[str(c) for c in plan.clips(max(plan.turns, plan.barge_ins + 1))],
        turns=timeline.turns,
        barge_ins=barge.barge_ins(),
        barge_in_stages=barge.barge_in_stages(),
        barge_ins_tried=plan.barge_ins,
        machine=quietness(before, sample()),
        head_start=head_start,
    )


async def _conversation(
    plan: BenchPlan, clips: list[Path], scratch: Path, barge_in_after: float | None, timeline: Timeline
) -> dict[str, int]:
    """Run one conversation; return how often the graph's replies got a head start (``HEAD_START``)."""
    spec, problems = parse(plan.config, plan.overrides, plan.env)
    if spec is None or problems:
        raise ValidationError(problems)
    rewire(spec, clips, scratch, barge_in_after)
    compiled, problems = build(spec)
    hide_secrets(problems, spec.secrets)
    if problems:
        raise ValidationError(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
    check_conversation(compiled.processors, spec.file)
    graph = compiled.graph()
    graph.add_observer(timeline)
    await graph.run()
    return {
        key: sum(getattr(node, attribute, 0) for node in compiled.processors.values())
        for key, attribute in HEAD_START.items()
    }


def _reporter(progress: bool, what: str, total: int) -> Callable[[int, Turn], None]:
    def report(index: int, turn: Turn) -> None:
        stages = turn.stages()
        if progress and stages is not None:
            _say(True, f"{what} {index + 1}/{total}: {1000 * stages['voice_to_voice']:.0f} ms")

    return report


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[bench] {text}", file=sys.stderr, flush=True)
