"""benchmarks/capacity.py runs end to end on a small sweep and reports every figure as JSON; the frame
tags it times the audio path with survive the trip and are read back where a chunk ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.capacity_load import FRAME_BYTES, FRAME_SAMPLES, TAG_SAMPLES, read_tag, tag
from benchmarks.capacity_server import summarise_stacks
from benchmarks.voice_to_voice import CLIPS

ROOT = Path(__file__).resolve().parent.parent


def test_a_tag_reads_back_and_changes_no_sample_by_more_than_one() -> None:
    speech = np.random.default_rng(1).integers(-20000, 20000, FRAME_SAMPLES, dtype=np.int16).tobytes()
    tagged = tag(speech, 513, 4_000_000_001)
    assert read_tag(tagged, 0) == (513, 4_000_000_001)
    delta = np.frombuffer(tagged, "<i2").astype(int) - np.frombuffer(speech, "<i2").astype(int)
    assert np.abs(delta).max() <= 1 and not delta[TAG_SAMPLES:].any()


def test_a_tag_is_found_inside_a_chunk_and_silence_is_not_mistaken_for_one() -> None:
    chunk = bytes(FRAME_BYTES) + tag(bytes(FRAME_BYTES), 7, 42)
    assert read_tag(chunk, FRAME_SAMPLES) == (7, 42)
    assert read_tag(chunk, 0) is None


def test_stacks_are_summarised_by_own_and_inclusive_share() -> None:
    raw = "main (a.py:1);loop (b.py:2);vad (processors/vad/x.py:3) 3\nmain (a.py:1);loop (b.py:2) 1\n"
    summary = summarise_stacks(raw, possible=8)
    assert summary["samples"] == 4 and summary["busy_share_of_one_core"] == 0.5
    assert summary["own"][0] == ["vad (processors/vad/x.py:3)", 0.75]
    assert ["main (a.py:1)", 1.0] in summary["inclusive"]
    assert ["processors/vad", 0.75] in summary["areas_inclusive"]


@pytest.mark.slow
@pytest.mark.skipif(not all(c.exists() for c in CLIPS), reason="needs pocketsphinx-testdata (./setup.sh)")
def test_a_small_cloud_sweep_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "capacity.json"
    sweep = ["--sessions", "1,2", "--duration", "3", "--warmup", "1"]
    cores = ["--server-cores", "all", "--client-cores", "all"]
    command = [sys.executable, "benchmarks/capacity.py", *sweep, *cores, "--output", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert json.loads(output.read_text()) == lines
    steps = [r for r in lines if "window_s" in r]
    assert [s["sessions"] for s in steps] == [1, 2]
    for step in steps:
        assert step["admitted"] == step["sessions"], step["refusals"]
        assert step["path"]["count"] > 0 and step["path_untagged"] == 0  # every chunk matched a frame
        assert step["server_cpu_cores"] > 0 and step["rss_mb"] > 0
    summary = lines[-1]
    assert summary["summary"] and summary["graph"] == "cloud"
    assert "max sessions" in done.stderr
