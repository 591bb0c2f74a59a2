"""The benchmark's results as numbers: per-stage p50/p95, the JSON document and the text table."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.bench.machine import Quietness
from pipeline.bench.timeline import BARGE_IN_STAGES, STAGES, Turn
from pipeline.metrics import percentile

__all__ = ["Results", "summary", "table"]

LABELS = {
    "vad_hangover": "VAD hangover",
    "stt": "STT final",
    "llm_first_token": "LLM first token",
    "tts_first_audio": "TTS first audio",
    "playout": "playout",
    "voice_to_voice": "voice to voice",
    "barge_in": "barge-in",
    "vad_start": "  VAD start",
    "interruption": "  interruption",
    "bot_silent": "  bot silent",
}


@dataclass
class Results:
    """One benchmark run: the config, every turn's marks, the barge-ins and the machine's state."""

    config: str
    clips: list[str]
    turns: list[Turn]
    barge_ins: list[float]
    barge_ins_tried: int
    machine: Quietness
    barge_in_stages: list[dict[str, float]] = field(default_factory=list)
    """Where each barge-in's time went (``timeline.BARGE_IN_STAGES``), when its marks were seen."""
    head_start: dict[str, int] = field(default_factory=dict)
    """Replies started before their turn ended: preemptive replies used and dropped, first pieces
    synthesised ahead (zeros for a graph without them)."""

    def answered(self) -> list[dict[str, float]]:
        return [s for t in self.turns if (s := t.stages())]

    def stages(self) -> dict[str, dict[str, Any]]:
        """Per stage (and ``barge_in``): count, p50, p95 and max in ms; stages nobody reached are left out."""
        rows = self.answered()
        out = {stage: summary([r[stage] for r in rows]) for stage in STAGES if rows}
        if self.barge_ins:
            out["barge_in"] = summary(self.barge_ins)
        for stage in BARGE_IN_STAGES if self.barge_in_stages else ():
            out[stage] = summary([b[stage] for b in self.barge_in_stages])
        return out

    def later_turns(self) -> dict[str, Any] | None:
        """Voice to voice of every answered turn but the first: what a warm first turn should match."""
        later = [r["voice_to_voice"] for r in self.answered()[1:]]
        return summary(later) if later else None

    def first_speech_again(self) -> dict[str, Any] | None:
        """Voice to voice of later turns that replay the first turn's speech (``--turns`` more than
        the clips): the fairest check that the first turn is not slowed by cold engines."""
        first = self.clips[0] if self.clips else None
        again = [
            s["voice_to_voice"]
            for clip, turn in zip(self.clips[1:], self.turns[1:], strict=False)
            if clip == first and (s := turn.stages())
        ]
        return summary(again) if again and self.turns[0].stages() else None

    def document(self) -> dict[str, Any]:
        """The JSON report: summary first, then each turn (ms since its end of speech), then the machine."""
        turns = []
        for index, turn in enumerate(self.turns):
            stages = turn.stages()
            turns.append(
                {
                    "turn": index + 1,
                    "text": turn.text,
                    "answered": stages is not None,
                    "interrupted": turn.interrupted,
                    **({f"{k}_ms": round(1000 * v, 1) for k, v in stages.items()} if stages else {}),
                }
            )
        answered = self.answered()
        return {
            "benchmark": "voice_to_voice",
            "config": self.config,
            "turns": len(self.turns),
            "answered": len(answered),
            "barge_ins_tried": self.barge_ins_tried,
            "barge_ins_measured": len(self.barge_ins),
            "first_turn_voice_to_voice_ms": (
                round(1000 * answered[0]["voice_to_voice"], 1) if answered else None
            ),
            "later_turns_voice_to_voice": self.later_turns(),
            "first_speech_again_voice_to_voice": self.first_speech_again(),
            "head_start": self.head_start,
            "stages": self.stages(),
            "per_turn": turns,
            "clips": self.clips,
            "machine": {**asdict(self.machine), "quiet": self.machine.quiet},
        }


def summary(values: list[float]) -> dict[str, Any]:
    """count, p50, p95 and max of ``values`` (seconds) in ms."""
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * percentile(ordered, 95), 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def table(results: Results) -> str:
    """The stage table as text, with the machine's warnings under it."""
    lines = [f"{'stage':<18}{'n':>4}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}"]
    for stage, stats in results.stages().items():
        lines.append(
            f"{LABELS[stage]:<18}{stats['count']:>4}{stats['p50_ms']:>10}{stats['p95_ms']:>10}{stats['max_ms']:>10}"
        )
    answered = len(results.answered())
    barge_ins = len(results.barge_ins)
    lines.append(f"{answered}/{len(results.turns)} turns answered, {barge_ins} barge-ins measured")
    later = results.later_turns()
    if answered and later:
        first = 1000 * results.answered()[0]["voice_to_voice"]
        again = results.first_speech_again()
        same = f"; the same speech later p50 {again['p50_ms']:.0f} ms" if again else ""
        lines.append(
            f"first turn {first:.0f} ms voice to voice; later turns p50 {later['p50_ms']:.0f} ms{same}"
        )
    if any(results.head_start.values()):
        h = results.head_start
        lines.append(
            f"preemptive replies: {h.get('preemptive_replies_used', 0)} used, "
            f"{h.get('preemptive_replies_dropped', 0)} dropped; "
            f"first pieces synthesised ahead and played: {h.get('first_pieces_made_ahead', 0)}"
        )
    m = results.machine
    lines.append(
        f"machine: {m.cpus} CPUs, load {m.load_before[0]:.2f} -> {m.load_after[0]:.2f}, "
        f"steal {m.steal:.1%}, other processes {m.others:.0%}"
    )
    lines.extend(f"warning: {w}; these numbers are not a quiet machine's" for w in m.warnings)
    return "\n".join(lines)
