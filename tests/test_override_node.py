"""Switching a node's engine from the command line: ``--set NODE={type: ...}`` replaces the node, and
``--set NODE.type=...`` alone says which of the file's params the new type lacks and how to switch."""

from __future__ import annotations

from pathlib import Path

from pipeline import config

ROOT = Path(__file__).resolve().parent.parent
VAD_SPLIT = ROOT / "configs" / "vad-split.yaml"


def test_switching_the_type_alone_names_the_params_the_new_type_lacks() -> None:
    problems = config.check(VAD_SPLIT, ["vad.type=vad.webrtc"])
    assert [p.key for p in problems] == ["threshold"]
    (problem,) = problems
    assert "written for the file's type, not vad.webrtc" in problem.message
    assert problem.fix == "switch the whole node instead: --set 'vad={type: vad.webrtc}'"


def test_replacing_the_node_switches_the_engine_in_one_override() -> None:
    compiled, problems = config.compile_config(VAD_SPLIT, ["vad={type: vad.webrtc, aggressiveness: 3}"])
    assert problems == []
    assert compiled is not None
    vad = compiled.processors["vad"]
    assert type(vad).__name__ == "WebRTCVad"
    assert vad.params.aggressiveness == 3


def test_a_replaced_node_keeps_the_files_queue_unless_given_one() -> None:
    text = """
nodes:
  src: {type: source.tone, duration: 0.1}
  out: {type: debug.null, queue: {size: 3}}
edges: [src -> out]
"""
    compiled, problems = config.compile_text(text, overrides=["out={type: debug.print}"])
    assert problems == [] and compiled is not None
    assert compiled.processors["out"]._inbox.maxsize == 3
    compiled, problems = config.compile_text(text, overrides=["out={type: debug.null, queue: {size: 5}}"])
    assert problems == [] and compiled is not None
    assert compiled.processors["out"]._inbox.maxsize == 5


def test_a_replacement_without_a_type_is_refused_with_an_example() -> None:
    problems = config.check(VAD_SPLIT, ["vad={threshold: 0.3}"])
    assert len(problems) == 1
    assert problems[0].file == "--set vad"
    assert "takes a mapping with a type" in problems[0].message
    assert "--set 'vad={type:" in problems[0].fix


def test_a_bad_param_in_a_replacement_names_the_override() -> None:
    problems = config.check(VAD_SPLIT, ["vad={type: vad.webrtc, agressiveness: 3}"])
    assert len(problems) == 1
    assert problems[0].file == "--set vad.agressiveness"
    assert problems[0].fix == "did you mean 'aggressiveness'?"
