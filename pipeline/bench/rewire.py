"""Turn any conversation graph into one the benchmark can drive: speech files in, a timed speaker out.

The graph's input transport (its one node nothing feeds) becomes ``file.turns`` saying the speech
files in real time, as a microphone would; its output transport (the one node that feeds nothing)
becomes a real-time ``file.output``, which plays the bot's audio at a speaker's pace and reports
``Bot*SpeakingFrame`` as a live transport does. Everything between — VAD, STT, turn taking, LLM,
TTS — is the user's own, untouched. A ``server:`` section is dropped (one conversation is run
directly) and recorders write into the benchmark's scratch folder, not the user's recordings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.config.spec import GraphSpec, NodeSpec
from pipeline.errors import VoxgraphError
from pipeline.frames import BotAudioFrame, Frame, LLMTextFrame, UserStoppedSpeakingFrame
from pipeline.processor import Processor

__all__ = ["BenchGraphError", "check_conversation", "endpoints", "rewire"]

NEEDED: dict[type[Frame], str] = {
    UserStoppedSpeakingFrame: "VAD (vad.*)",
    LLMTextFrame: "LLM (llm.*)",
    BotAudioFrame: "TTS (tts.*)",
}
"""What a graph must produce to be timed, and the node that produces it."""
PAUSE_SECS = 1.0
"""Silence after each spoken file: longer than any VAD's stop hangover, so each file ends a turn."""


class BenchGraphError(VoxgraphError, ValueError):
    """The config is not shaped like a conversation the benchmark can drive."""


def endpoints(spec: GraphSpec) -> tuple[str, str]:
    """The names of the graph's input and output transports; ``BenchGraphError`` when not one each."""
    sources = {a for a, _ in spec.edges}
    targets = {b for _, b in spec.edges}
    inputs = [n for n in spec.nodes if n in sources and n not in targets]
    outputs = [n for n in spec.nodes if n in targets and n not in sources]
    if len(inputs) != 1 or len(outputs) != 1:
        raise BenchGraphError(
            f"{spec.file}: expected one input transport and one output transport (a chain such as "
            f"mic -> vad -> stt -> turns -> llm -> tts -> speaker); found inputs {inputs or 'none'} "
            f"and outputs {outputs or 'none'}"
        )
    return inputs[0], outputs[0]


def rewire(spec: GraphSpec, clips: Sequence[Path], scratch: Path, barge_in_after: float | None) -> GraphSpec:
    """Edit ``spec`` in place (and return it) so that it says ``clips`` and plays into ``scratch``."""
    mic, speaker = endpoints(spec)
    caller: dict[str, object] = {
        "paths": [str(c) for c in clips],
        "realtime": True,
        "pause": PAUSE_SECS,
    }
    if barge_in_after is not None:
        caller["barge_in_after"] = barge_in_after
    spec.nodes[mic] = NodeSpec(mic, type="file.turns", params=caller)
    played = {"path": str(scratch / "reply.wav"), "audio": "bot", "realtime": True}
    spec.nodes[speaker] = NodeSpec(speaker, type="file.output", params=played)
    for node in spec.nodes.values():
        if node.type == "recorder":
            node.params["directory"] = str(scratch / "recordings")
            node.interpolated.pop("directory", None)
    spec.server = None
    spec.settings.setdefault("auto_resample", True)  # the speech files are 16 kHz; any mic rate may be set
    return spec


def check_conversation(processors: Mapping[str, Processor], file: str) -> None:
    """``BenchGraphError`` unless some node ends the user's speech, one writes a reply and one speaks it."""
    made = {kind for p in processors.values() for kind in p.produces}
    missing = [what for kind, what in NEEDED.items() if not any(issubclass(m, kind) for m in made)]
    if missing:
        raise BenchGraphError(
            f"{file}: not a voice conversation, nothing to time: it has no {' and no '.join(missing)}"
        )
