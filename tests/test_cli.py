"""``python -m pipeline``: validate, graph, list and run, in-process and as a real process (Ctrl-C)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from textwrap import dedent

import pytest

from pipeline.cli import main
from pipeline.params import param_specs
from pipeline.registry import available, resolve
from tests.speech import librivox

REPO = Path(__file__).resolve().parent.parent
BOUND = 15.0  # seconds any one subprocess may take before the test fails instead of hanging

BROKEN = """\
name: broken
nodes:
  src:
    type: source.tone
    frequncy: 440
    duration: soon
  rs: {type: audio.resample}
  out: {type: debug.prnt}
  lonely: {type: debug.print}
edges:
  - src -> rs -> out
  - src -> nowhere
extra: 1
"""
BROKEN_LINES = {5, 6, 7, 8, 9, 12, 13}  # one problem on each

TEXTS = """\
nodes:
  src: {type: source.text, texts: [hello, world]}
  out: {type: debug.print}
edges:
  - src -> out
"""

FAN_IN = """\
name: fan-in
nodes:
  mic-left: {type: source.tone, sample_rate: 48000, duration: 0.04}
  to-16k: {type: audio.resample, sample_rate: 16000}
  typed_user: {type: source.text, texts: [hi]}
  out-print: {type: debug.print}
edges:
  - mic-left -> to-16k -> out-print
  - typed_user -> out-print
"""


def write(tmp_path: Path, text: str, name: str = "graph.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text))
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def python_m_pipeline(
    *argv: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, argv)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=BOUND,
    )


# --- validate ------------------------------------------------------------------------------------


def test_validate_prints_every_problem_with_its_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BROKEN, "broken.yaml")
    code, out, err = cli(capsys, "validate", path)
    assert code == 2
    assert out == ""
    assert f"{len(BROKEN_LINES)} problems found:" in err
    reported = {int(n) for n in re.findall(rf"{re.escape(str(path))}:(\d+): ", err)}
    assert reported == BROKEN_LINES
    for expected in (
        "unknown param 'frequncy'",
        "did you mean 'frequency'?",
        "param 'duration' expects float | null, got 'soon'",
        "missing required param 'sample_rate'",
        "unknown type 'debug.prnt'",
        "did you mean 'debug.print'?",
        "nothing feeds 'lonely'",
        "unknown node 'nowhere'",
        "unknown top-level key 'extra'",
    ):
        assert expected in err


SHIPPED = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))
KEYS = ("ASSEMBLYAI_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "FIREWORKS_API_KEY")


def test_every_shipped_config_is_checked() -> None:
    assert "configs/assistant.yaml" in SHIPPED and len(SHIPPED) >= 11


@pytest.mark.parametrize("shipped", SHIPPED)
def test_validate_accepts_the_shipped_configs(
    shipped: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in KEYS:  # cloud configs need their keys set (to anything) to validate
        monkeypatch.setenv(key, "test-key")
    monkeypatch.setenv("INPUT", str(librivox("0880")))  # file configs need an input file
    code, out, err = cli(capsys, "validate", REPO / shipped)
    assert code == 0
    assert out.strip().endswith(": valid")
    assert err == ""


def test_an_unset_variable_is_reported_once_not_again_by_the_nodes_own_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_INPUT", raising=False)
    config = tmp_path / "in.yaml"
    lines = ["nodes:", "  src: {type: source.wav, path: '${NO_SUCH_INPUT}'}", "  out: {type: debug.null}"]
    config.write_text("\n".join([*lines, "edges: [src -> out]", ""]))
    code, _, err = cli(capsys, "validate", config)
    assert code == 2
    assert "1 problem found" in err and "NO_SUCH_INPUT is not set" in err


def test_validate_checks_overrides_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, TEXTS)
    assert cli(capsys, "validate", path, "--set", "out.kinds=[text]")[0] == 0
    code, _, err = cli(capsys, "validate", path, "--set", "out.kinds=[txt]", "--set", "srcc.texts=[a]")
    assert code == 2
    assert "2 problems found:" in err
    assert "unknown frame kind 'txt'" in err
    assert "unknown node 'srcc'" in err
    assert "did you mean 'src'?" in err


def test_validate_of_a_missing_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "validate", tmp_path / "nope.yaml")
    assert code == 2
    assert "cannot read the config" in err


def test_validate_end_to_end_as_a_process(tmp_path: Path) -> None:
    bad = python_m_pipeline("validate", write(tmp_path, BROKEN, "broken.yaml"))
    assert bad.returncode == 2
    assert {int(n) for n in re.findall(r"broken\.yaml:(\d+): ", bad.stderr)} == BROKEN_LINES
    assert "Traceback" not in bad.stderr
    good = python_m_pipeline("validate", "configs/hello.yaml")
    assert (good.returncode, good.stdout.strip()) == (0, "configs/hello.yaml: valid")


# --- graph ---------------------------------------------------------------------------------------


def test_graph_prints_mermaid_matching_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "graph", write(tmp_path, FAN_IN))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "flowchart LR"
    nodes = {}
    for line in lines[1:]:
        found = re.fullmatch(r'    (\w+)(\(\[|\[)"(.+?)<br/><small>(.+?)</small>"(\]\)|\])', line)
        if found:
            nodes[found[1]] = (found[3], found[4], found[2] == "([")
    assert [name for name, _, _ in nodes.values()] == ["mic-left", "to-16k", "typed_user", "out-print"]
    ids = {name: node_id for node_id, (name, _, _) in nodes.items()}
    assert {name: type_ for name, type_, _ in nodes.values()} == {
        "mic-left": "source.tone",
        "to-16k": "audio.resample",
        "typed_user": "source.text",
        "out-print": "debug.print",
    }
    terminal = {name for name, _, end in nodes.values() if end}
    assert terminal == {"mic-left", "typed_user", "out-print"}  # sources and sinks are rounded
    edges = [line.strip() for line in lines[1:] if "-->" in line]
    assert edges == [
        f'{ids["mic-left"]} -->|"48000 Hz mono"| {ids["to-16k"]}',
        f'{ids["to-16k"]} -->|"16000 Hz mono"| {ids["out-print"]}',
        f"{ids['typed_user']} --> {ids['out-print']}",
    ]
    assert len(lines) == 1 + len(nodes) + len(edges)


def test_graph_as_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "graph", write(tmp_path, FAN_IN), "--format", "dot")
    assert code == 0
    assert out.startswith('digraph "fan-in" {\n')
    assert out.rstrip().endswith("}")
    assert '"to-16k" [label="to-16k\\naudio.resample"];' in out
    assert '"mic-left" [label="mic-left\\nsource.tone", shape=oval];' in out
    edges = [line.strip() for line in out.splitlines() if "->" in line]
    assert edges == [
        '"mic-left" -> "to-16k" [label="48000 Hz mono"];',
        '"to-16k" -> "out-print" [label="16000 Hz mono"];',
        '"typed_user" -> "out-print";',
    ]


def test_graph_applies_overrides_and_rejects_invalid_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, FAN_IN)
    code, out, _ = cli(capsys, "graph", path, "--set", "mic-left.channels=2", "--set", "to-16k.channels=1")
    assert code == 0
    assert '-->|"48000 Hz 2 channels"|' in out
    code, out, err = cli(capsys, "graph", write(tmp_path, BROKEN, "broken.yaml"))
    assert (code, out) == (2, "")
    assert "problems found:" in err


# --- list ----------------------------------------------------------------------------------------


def test_list_shows_every_builtin_type_with_params_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list")
    assert code == 0
    blocks = {block.split()[0]: block for block in out.strip().split("\n\n")}
    builtin = {
        "source.silence",
        "source.tone",
        "source.noise",
        "source.wav",
        "source.text",
        "source.transcripts",
        "audio.resample",
        "debug.print",
        "debug.null",
    }
    assert builtin <= set(blocks)
    assert set(blocks) == set(available())
    for name in builtin:
        block = blocks[name]
        for spec in param_specs(resolve(name).Params):
            shown = "required" if spec.required else f"default {spec.default!r}"
            shown += f"; {spec.limits}" if spec.limits else ""
            assert f"    {spec.name}: {spec.type_name} ({shown})" in block, (name, spec.name)
    assert blocks["source.tone"].startswith("source.tone  [source]")
    assert "frequency: float (default 440.0; more than 0)" in blocks["source.tone"]
    assert "sample_rate: int (required; 1 or more)" in blocks["audio.resample"]


def test_list_one_type_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list", "source.tone", "--json")
    assert code == 0
    [entry] = json.loads(out)
    assert entry["type"] == "source.tone"
    assert entry["class"] == "pipeline.sources:ToneSource"
    assert entry["role"] == "source"
    assert entry["produces"] == ["audio"]
    params = {p["name"]: p for p in entry["params"]}
    assert params["frequency"] == {
        "name": "frequency",
        "type": "float",
        "required": False,
        "default": 440.0,
        "doc": params["frequency"]["doc"],
        "limits": params["frequency"]["limits"],
    }
    assert params["frequency"]["doc"]
    assert params["duration"]["type"] == "float | null"


def test_list_everything_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list", "--json")
    assert code == 0
    entries = json.loads(out)
    assert {e["type"] for e in entries} == set(available())
    resample = next(e for e in entries if e["type"] == "audio.resample")
    first = resample["params"][0]
    assert (first["name"], first["required"]) == ("sample_rate", True)


def test_list_of_an_unknown_type_suggests_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "list", "source.tonne")
    assert (code, out) == (2, "")
    assert "unknown type 'source.tonne'" in err
    assert "did you mean 'source.tone'?" in err


def test_list_takes_import_paths(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list", "tests.cli_nodes:Refuses", "--json")
    assert code == 0
    [entry] = json.loads(out)
    assert entry["params"] == [
        {
            "name": "api_key",
            "type": "str",
            "required": True,
            "default": None,
            "doc": "credential",
            "limits": "",
        }
    ]


# --- run -----------------------------------------------------------------------------------------


def test_run_prints_what_flows_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", write(tmp_path, TEXTS))
    assert code == 0
    assert out.splitlines() == ['[out] user_text "hello"', '[out] user_text "world"']
    assert err == ""


def test_run_applies_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, TEXTS)
    code, out, _ = cli(capsys, "run", path, "--set", "src.texts=[bonjour, 'tout le monde']")
    assert code == 0
    assert out.splitlines() == ['[out] user_text "bonjour"', '[out] user_text "tout le monde"']
    code, out, _ = cli(capsys, "run", path, "--set", "out.kinds=[audio]")
    assert (code, out) == (0, "")


def test_run_of_an_invalid_config_exits_2_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "run", write(tmp_path, TEXTS), "--set", "src.textz=[a]")
    assert (code, out) == (2, "")
    assert "unknown param 'textz'" in err


def test_run_saves_metrics_per_processor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "latency.json"
    code, _, err = cli(capsys, "run", write(tmp_path, FAN_IN), "--metrics", metrics, "--summary")
    assert code == 0
    report = json.loads(metrics.read_text())
    assert (report["graph"], report["outcome"], report["errors"]) == ("fan-in", "ended", [])
    assert list(report["processors"]) == ["mic-left", "to-16k", "typed_user", "out-print"]
    for name, entry in report["processors"].items():
        assert entry["frames"] >= 3, name  # start, data, end at least
        ages = entry["age_ms"]
        assert ages["count"] == entry["frames"]
        assert 0 <= ages["p50"] <= ages["p95"] <= ages["p99"] <= ages["max"]
    assert report["processors"]["to-16k"]["type"] == "audio.resample"
    assert err.startswith("fan-in: ended after ")
    for name in report["processors"]:
        assert f"  {name} " in err


def test_an_unwritable_metrics_path_is_refused_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = tmp_path / "missing" / "latency.json"
    code, out, err = cli(capsys, "run", write(tmp_path, TEXTS), "--metrics", metrics)
    assert (code, out) == (2, "")
    assert str(metrics.parent) in err


def test_a_fatal_processor_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        """\
        nodes:
          src: {type: source.text, texts: [hello]}
          svc: {type: "tests.cli_nodes:Refuses", api_key: not-a-secret}
          out: {type: debug.print}
        edges:
          - src -> svc -> out
        """,
    )
    metrics = tmp_path / "m.json"
    code, out, err = cli(capsys, "run", path, "--metrics", metrics)
    assert code == 1
    assert out == ""
    assert "the service refused key ***" in err  # a secret param's value is hidden where the error is made
    assert "not-a-secret" not in err
    report = json.loads(metrics.read_text())
    assert report["outcome"] == "failed"
    assert report["errors"] == [
        {
            "processor": "svc",
            "message": "FatalProcessorError: the service refused key ***",
            "fatal": True,
        }
    ]


def test_run_end_to_end_as_a_process() -> None:
    fast = ["--set", "user.interval=0", "--set", "tone.realtime=false"]
    result = python_m_pipeline("run", "configs/hello.yaml", *fast, env={"GREETING": "hi from the env"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert '[out] transcript "hello from voxgraph"' in lines
    assert '[out] transcript "hi from the env"' in lines
    assert any(re.fullmatch(r"\[out\] user_audio [\d.]+ ms 16000 Hz mono", line) for line in lines)
    assert result.stderr == ""


# --- Ctrl-C --------------------------------------------------------------------------------------


def wait_for_file(path: Path, process: subprocess.Popen[str], what: str) -> None:
    """Poll for a file a child writes (no event crosses processes), failing fast if the child dies."""
    deadline = time.monotonic() + BOUND
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the process exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {BOUND}s")
        time.sleep(0.02)


def wait_for_text(path: Path, text: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + BOUND
    while text not in path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{text!r} never appeared in {path.name}: {path.read_text()!r}")
        time.sleep(0.02)


def start_live(tmp_path: Path, node_type: str, settings: str = "") -> tuple[subprocess.Popen[str], Path]:
    config = write(
        tmp_path,
        f"""\
        {settings}
        nodes:
          mic: {{type: source.silence, duration: null, realtime: true}}
          rec:
            type: "tests.cli_nodes:{node_type}"
            started: {tmp_path / "started"}
            stopped: {tmp_path / "stopped"}
        edges:
          - mic -> rec
        """,
    )
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
    return process, stderr


def finish(process: subprocess.Popen[str]) -> int:
    try:
        return process.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the process did not exit within {BOUND}s")


def test_ctrl_c_stops_cleanly_and_recorders_flush(tmp_path: Path) -> None:
    process, stderr = start_live(tmp_path, "Recorder")
    try:
        wait_for_file(tmp_path / "started", process, "on_start")
        process.send_signal(signal.SIGINT)
        assert finish(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "stopped").exists(), "on_stop did not run: a recorder would lose its file"
    assert int((tmp_path / "stopped").read_text()) >= 0
    assert "stopping: finishing queued work" in stderr.read_text()
    assert "Traceback" not in stderr.read_text()


def test_ctrl_c_twice_cancels_a_graph_stuck_in_process(tmp_path: Path) -> None:
    process, stderr = start_live(tmp_path, "Stuck", settings="settings: {end_timeout: 600}")
    try:
        wait_for_file(tmp_path / "started", process, "a frame in process()")
        process.send_signal(signal.SIGINT)
        wait_for_text(stderr, "stopping:", process)  # the first Ctrl-C was seen: now it drains forever
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        assert finish(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "stopped").read_text() == "stopped\n"
    assert "Traceback" not in stderr.read_text()
