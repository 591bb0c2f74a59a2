"""Negotiation: audio formats and frame kinds along edges, and resamplers inserted where they differ."""

from __future__ import annotations

from typing import ClassVar

from pipeline import negotiate
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import AudioFrame, DataFrame, Frame, TextFrame, TranscriptFrame
from pipeline.processor import Processor, Source
from processors.resample import Resampler
from tests.custom_nodes import Beeps, Listen16k, Shout, Speak, Transcripts, Words


def resampler(name: str, target: AudioFormat) -> Processor:
    return Resampler(name=name, sample_rate=target.sample_rate, channels=target.channels)


class Anything(Processor):
    """Handles every data frame, takes any audio, passes it on."""


class Picky(Processor):
    """Handles every data frame (so audio too) but only takes 8 kHz mono."""

    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(8000, 1)


class TextOnly(Processor):
    """Handles text only, so its audio caps never matter."""

    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(8000, 1)


class Transcriber(Processor):
    """Consumes text, emits transcripts."""

    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TranscriptFrame,)


class Undeclared(Source):
    """A source that does not say what it produces."""


class Broken(Processor):
    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        raise RuntimeError("no idea")


def messages(processors: dict[str, Processor], edges: list[tuple[str, str]]) -> list[str]:
    return [p.message for p in negotiate.check(processors, edges)]


def test_formats_flow_along_edges() -> None:
    nodes: dict[str, Processor] = {
        "mic": Beeps(sample_rate=16000),
        "any": Anything(),
        "stt": Listen16k(),
        "words": Words(),
        "shout": Shout(),
    }
    edges = [("mic", "stt"), ("stt", "any"), ("words", "shout")]
    assert negotiate.check(nodes, edges) == []
    assert negotiate.edge_formats(nodes, edges) == {
        ("mic", "stt"): AudioFormat(16000),
        ("stt", "any"): AudioFormat(16000),
        ("words", "shout"): None,
    }


def test_mismatch_names_both_ends_and_the_fix() -> None:
    nodes: dict[str, Processor] = {"mic": Beeps(), "stt": Listen16k()}
    [problem] = negotiate.check(nodes, [("mic", "stt")])
    assert problem.node == "stt"
    assert problem.message == "'stt' expects 16000 Hz mono; 'mic' produces 48000 Hz mono"
    assert problem.fix == (
        "add an audio.resample node (sample_rate: 16000, channels: 1) between 'mic' and 'stt', "
        "or set settings.auto_resample: true"
    )
    [finding] = negotiate.diagnose(nodes, [("mic", "stt")])
    assert finding.edge == ("mic", "stt")
    assert finding.resample_to == AudioFormat(16000, 1)


def test_generic_handlers_check_audio_and_text_handlers_do_not() -> None:
    nodes: dict[str, Processor] = {
        "mic": Beeps(channels=2),
        "words": Words(),
        "picky": Picky(),
        "text": TextOnly(),
    }
    edges = [("mic", "picky"), ("mic", "text"), ("words", "text")]
    assert messages(nodes, edges) == ["'picky' expects 8000 Hz mono; 'mic' produces 48000 Hz 2 channels"]


def test_fan_in_of_two_formats() -> None:
    nodes: dict[str, Processor] = {"a": Beeps(sample_rate=16000), "b": Beeps(), "mix": Anything()}
    edges = [("a", "mix"), ("b", "mix")]
    assert messages(nodes, edges) == [
        "fan-in into 'mix' joins 16000 Hz mono from 'a' and 48000 Hz mono from 'b'"
    ]
    fixed, fixed_edges = negotiate.insert_resamplers(nodes, edges, resampler)
    assert fixed_edges == [("a", "mix"), ("b", "resample_b_mix"), ("resample_b_mix", "mix")]
    assert negotiate.check(fixed, fixed_edges) == []


def test_insert_resamplers_converts_to_the_closest_accepted_format() -> None:
    nodes: dict[str, Processor] = {"mic": Beeps(channels=2), "stt": Listen16k(), "out": Anything()}
    edges = [("mic", "stt"), ("stt", "out")]
    fixed, fixed_edges = negotiate.insert_resamplers(nodes, edges, resampler)
    assert list(fixed) == ["mic", "resample_mic_stt", "stt", "out"]
    assert fixed_edges == [("mic", "resample_mic_stt"), ("resample_mic_stt", "stt"), ("stt", "out")]
    inserted = fixed["resample_mic_stt"]
    assert isinstance(inserted, Resampler)
    assert (inserted.params.sample_rate, inserted.params.channels) == (16000, 1)
    assert negotiate.check(fixed, fixed_edges) == []
    assert negotiate.edge_formats(fixed, fixed_edges)[("stt", "out")] == AudioFormat(16000)
    assert list(nodes) == ["mic", "stt", "out"]  # the input is left alone


def test_inserted_names_never_collide() -> None:
    nodes: dict[str, Processor] = {"mic": Beeps(), "resample_mic_stt": Anything(), "stt": Listen16k()}
    edges = [("mic", "stt"), ("mic", "resample_mic_stt")]
    fixed, _ = negotiate.insert_resamplers(nodes, edges, resampler)
    assert "resample_mic_stt_2" in fixed


def test_frame_kinds_that_cannot_arrive() -> None:
    nodes: dict[str, Processor] = {"t": Transcripts(), "words": Words(), "tts": Speak()}
    [problem] = negotiate.check(nodes, [("t", "tts")])
    assert problem.node == "tts"
    assert problem.message == "'tts' handles bot_text but receives only transcript"
    assert problem.fix == "feed 'tts' from a node that produces bot_text, e.g. an edge 'words -> tts'"


def test_consumed_kinds_stop_and_produced_kinds_flow_on() -> None:
    consumed: dict[str, Processor] = {"words": Words(), "stt": Transcriber(), "tts": Speak()}
    assert messages(consumed, [("words", "stt"), ("stt", "tts")]) == [
        "'tts' handles bot_text but receives only transcript"
    ]
    transformed: dict[str, Processor] = {"words": Words(), "shout": Shout(), "tts": Speak()}
    assert messages(transformed, [("words", "shout"), ("shout", "tts")]) == []
    passed_on: dict[str, Processor] = {"words": Words(), "any": Anything(), "tts": Speak()}
    assert messages(passed_on, [("words", "any"), ("any", "tts")]) == []


def test_generic_handlers_and_undeclared_sources_never_trigger() -> None:
    nodes: dict[str, Processor] = {"t": Transcripts(), "any": Anything(), "src": Undeclared(), "tts": Speak()}
    assert messages(nodes, [("t", "any"), ("src", "tts")]) == []
    assert Anything.handles == (DataFrame,)


def test_broken_output_format_is_a_problem_not_a_crash() -> None:
    nodes: dict[str, Processor] = {"mic": Beeps(), "b": Broken()}
    [problem] = negotiate.check(nodes, [("mic", "b")])
    assert problem.message == "output_format(48000 Hz mono) raised RuntimeError: no idea"


def test_cycles_and_unknown_ends_are_left_to_structure_checks() -> None:
    nodes: dict[str, Processor] = {"a": Anything(), "b": Anything()}
    assert negotiate.check(nodes, [("a", "b"), ("b", "a"), ("b", "ghost")]) == []


def test_audio_frames_count_as_audio_handling() -> None:
    class Meter(Processor):
        handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)
        accepts_audio: ClassVar[AudioCaps] = AudioCaps.of((8000, 16000), 1)

    nodes: dict[str, Processor] = {"mic": Beeps(sample_rate=11025), "meter": Meter()}
    [finding] = negotiate.diagnose(nodes, [("mic", "meter")])
    assert finding.problem.message == "'meter' expects 8000 Hz or 16000 Hz mono; 'mic' produces 11025 Hz mono"
    assert finding.resample_to == AudioFormat(8000)


def test_a_processor_that_forgot_produces_is_named_not_the_node_after_it() -> None:
    from pipeline.config import check_text

    problems = check_text(
        """
nodes:
  words: {type: "tests.custom_nodes:Words"}
  shout: {type: "tests.custom_nodes:Forgetful"}
  speak: {type: "tests.custom_nodes:Speak"}
edges: [words -> shout -> speak]
""",
        "forgetful.yaml",
    )
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.node == "shout"
    assert problem.message == (
        "'shout' produces nothing, so 'speak' (which handles bot_text) receives no data frames"
    )
    assert problem.fix == "if Forgetful pushes frames on, declare them: produces = (TextFrame,)"


def test_the_format_passes_through_a_processor_that_handles_and_produces_audio() -> None:
    from pipeline.config import check_text

    text = """
nodes:
  tone: {type: source.tone, sample_rate: 44100, duration: 0.1}
  gain: {type: "tests.custom_nodes:Gain"}
  vad: {type: vad.webrtc}
  out: {type: debug.null}
edges: [tone -> gain -> vad -> out]
"""
    problems = check_text(text, "gain.yaml")
    assert [p.node for p in problems] == ["vad"]
    assert "'gain' produces 44100 Hz mono" in problems[0].message
    assert check_text("settings: {auto_resample: true}\n" + text, "gain.yaml") == []
