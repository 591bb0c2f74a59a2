"""YAML configs: every problem at once with its line; interpolation, overrides, loading and running."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from typing import ClassVar

import pytest

from pipeline import config
from pipeline.errors import Problem, ValidationError
from pipeline.frames import AudioFrame, Direction, Frame, TextFrame
from pipeline.graph import Graph
from pipeline.inbox import Overflow
from pipeline.processor import Processor
from pipeline.registry import register
from processors.resample import Resampler
from tests.custom_nodes import Beeps, Shout, Words

C = "tests.custom_nodes"


@register("tests.echo")
class Echo(Processor):
    """A third-party-style type: registered by name, then used as ``type: tests.echo``."""

    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)

    async def process(self, frame: TextFrame) -> None:
        await self.push(TextFrame(text=frame.text * 2))


def problems_of(
    text: str, env: dict[str, str] | None = None, overrides: tuple[str, ...] = ()
) -> list[Problem]:
    return config.check_text(dedent(text), "test.yaml", overrides=overrides, env=env or {})


def summary(problems: list[Problem]) -> list[tuple[int | None, str | None, str]]:
    return [(p.line, p.node, p.message) for p in problems]


async def run(graph: Graph) -> list[Frame]:
    """Run to the end; returns the data frames that left the graph's sinks."""
    out: list[Frame] = []

    def collect(processor: Processor, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM and isinstance(frame, AudioFrame | TextFrame):
            out.append(frame)

    graph.output_handler = collect
    await graph.run()
    assert list(graph.errors) == []
    return out


def test_every_problem_at_once_with_file_line_node_and_fix() -> None:
    problems = problems_of(
        f"""\
        nme: oops
        settings:
          end_timeout: soon
        nodes:
          words: {{type: "{C}:Words", word: [a]}}
          shout: {{type: "{C}:Shout", suffix: 3}}
          keyed: {{type: "{C}:Keyed"}}
          echo: {{type: debug.prnt}}
          gone: {{type: "no_such_module_xyz:Thing"}}
          typo: {{type: "{C}:Shuot"}}
          plain: just-a-string
          notype: {{suffix: "!"}}
          mic: {{type: "{C}:Beeps"}}
          stt: {{type: "{C}:Listen16k", queue: {{size: 0, overflow: sometimes}}}}
          t: {{type: "{C}:Transcripts"}}
          tts: {{type: "{C}:Speak"}}
          loner: {{type: "{C}:Shout"}}
          a: {{type: "{C}:Shout"}}
          b: {{type: "{C}:Shout"}}
          api: {{type: "{C}:Keyed", api_key: "${{API_KEY}}"}}
        edges:
          - words -> shout -> keyed
          - words -> shout
          - mic -> stt
          - t -> tts
          - words => echo
          - words -> shuot
          - a -> b -> a
          - words -> api
        """
    )
    assert summary(problems) == [
        (1, None, "unknown top-level key 'nme'"),
        (3, None, "setting 'end_timeout' expects float, got 'soon'"),
        (5, "words", "unknown param 'word'"),
        (6, "shout", "param 'suffix' expects str, got 3 (int)"),
        (7, "keyed", "missing required param 'api_key' (str)"),
        (8, "echo", "unknown type 'debug.prnt'"),
        (
            9,
            "gone",
            "cannot import module 'no_such_module_xyz' for type 'no_such_module_xyz:Thing': "
            "No module named 'no_such_module_xyz'",
        ),
        (10, "typo", "module 'tests.custom_nodes' has no 'Shuot'"),
        (11, "plain", "a node must be a mapping with a type:"),
        (12, "notype", "missing 'type'"),
        (14, "stt", "queue size must be a whole number >= 1, got 0"),
        (14, "stt", "queue overflow must be block or drop_oldest, got 'sometimes'"),
        (16, "tts", "'tts' handles bot_text but receives only transcript"),
        (17, "loner", "nothing feeds 'loner' (it is not a source)"),
        (20, "api", "environment variable API_KEY is not set"),
        (23, "words", "edge words -> shout is declared twice"),
        (24, "stt", "'stt' expects 16000 Hz mono; 'mic' produces 48000 Hz mono"),
        (26, None, "cannot read edge 'words => echo'"),
        (27, "shuot", "edge words -> shuot names unknown node 'shuot'"),
        (28, None, "edges form a cycle: a -> b -> a"),
    ]
    assert all(p.file == "test.yaml" for p in problems)
    fixes = {p.message: p.fix for p in problems}
    assert fixes["unknown top-level key 'nme'"] == "did you mean 'name'?"
    assert fixes["unknown param 'word'"] == "did you mean 'words'?"
    assert fixes["unknown type 'debug.prnt'"] == "did you mean 'debug.print'?"
    assert fixes["module 'tests.custom_nodes' has no 'Shuot'"] == "did you mean 'tests.custom_nodes:Shout'?"
    assert fixes["edge words -> shuot names unknown node 'shuot'"] == "did you mean 'shout'?"
    assert fixes["'stt' expects 16000 Hz mono; 'mic' produces 48000 Hz mono"] == (
        "add an audio.resample node (sample_rate: 16000, channels: 1) between 'mic' and 'stt', "
        "or set settings.auto_resample: true"
    )
    assert fixes["environment variable API_KEY is not set"] == (
        "export API_KEY=... or give a default: ${API_KEY:-...}"
    )
    assert (
        str(problems[2]) == "test.yaml:5: node 'words': unknown param 'word'\n    fix: did you mean 'words'?"
    )


def test_line_of_each_key_in_block_style() -> None:
    problems = problems_of(
        f"""\
        nodes:
          words:
            type: "{C}:Words"
          shout:
            type: "{C}:Shout"
            sufix: "?"
          keyed:
            type: "{C}:Keyed"
            retries: many
            queue:
              size: 4
              overflw: block
        edges:
          - [words, shout]
          - [words, keyed, shout]
          - words -> keyed
          - shout -> words
        """
    )
    assert summary(problems) == [
        (6, "shout", "unknown param 'sufix'"),
        (8, "keyed", "missing required param 'api_key' (str)"),
        (9, "keyed", "param 'retries' expects int, got 'many' (str)"),
        (12, "keyed", "unknown queue key 'overflw'"),
        (15, None, "edge [words, keyed, shout] is not a pair of node names"),
        (17, "words", "'words' is a source but has an edge into it"),
        (17, None, "edges form a cycle: words -> shout -> words"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes:\n  a: {type: x\n", (3, "YAML syntax error: expected ',' or '}', but got '<stream end>'")),
        ("nodes:\n  a: b: c\n", (2, "YAML syntax error: mapping values are not allowed here")),
        ("", (1, "the config is empty")),
        ("- a\n- b\n", (1, "the top level must be a mapping with nodes: and edges:")),
        ("name: x\nedges: []\n", (1, "no nodes: declared")),
        ("name: x\nnodes:\nedges: []\n", (2, "nodes: is empty")),
        ("nodes: {}\n", (1, "nodes: is empty")),
        ("nodes: [a, b]\n", (1, "nodes: must be a mapping of node name to node")),
        (f"nodes:\n  w: {{type: '{C}:Words'}}\n  w: {{type: '{C}:Words'}}\n", (3, "key 'w' appears twice")),
        (f"nodes:\n  my node: {{type: '{C}:Words'}}\n", (2, "node name 'my node' cannot be used in edges")),
        (f"nodes:\n  w: {{type: '{C}:Words'}}\nedges: w -> x\n", (3, "edges must be a list")),
        (f"nodes:\n  w: {{type: '{C}:Words'}}\nsettings: [1]\n", (3, "settings must be a mapping")),
        ("nodes:\n  w: {type: 3}\n", (2, "type must be a type name")),
        (f"nodes:\n  w:\n    type: '{C}:Words'\n    queue: 5\n", (4, "queue must be a mapping")),
        (f"nodes:\n  w: {{type: '{C}:WordsParams'}}\n", None),
    ],
)
def test_shape_problems(text: str, expected: tuple[int, str] | None) -> None:
    problems = config.check_text(text, "test.yaml", env={})
    assert len(problems) == 1
    if expected is None:
        assert problems[0].message.endswith("not a Processor subclass")
    else:
        line, start = expected
        assert (problems[0].line, problems[0].message[: len(start)]) == (line, start)


def test_interpolation_defaults_escapes_and_typed_values() -> None:
    graph = config.load_text(
        dedent(
            f"""\
            name: "${{NAME:-voice}}"
            settings:
              end_timeout: ${{END:-2.5}}
            nodes:
              mic:
                type: "{C}:Beeps"
                frames: ${{FRAMES:-3}}
                sample_rate: ${{RATE}}
              words:
                type: "{C}:Words"
                words: ["${{GREETING:-hi}} there", "costs $$5", "$$${{EMPTY:-x}}", "[${{EMPTY}}]"]
              shout:
                type: "{C}:Shout"
                suffix: ${{ZIP}}
            edges:
              - words -> shout
            """
        ),
        env={"RATE": "16000", "ZIP": "01234", "EMPTY": ""},
    )
    assert graph.name == "voice"
    assert graph.end_timeout == 2.5
    mic = graph.processors["mic"]
    assert isinstance(mic, Beeps)
    assert (mic.params.frames, mic.params.sample_rate) == (3, 16000)
    words = graph.processors["words"]
    assert isinstance(words, Words)
    assert words.params.words == ["hi there", "costs $5", "$x", "[]"]
    shout = graph.processors["shout"]
    assert isinstance(shout, Shout)
    assert shout.params.suffix == "01234"  # a str param keeps the text, not the number


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${1X}", "'${1X}' is not a variable reference"),
        ("${OPEN", "unclosed '${' in the value of 'suffix'"),
        ("a ${MISSING} b", "environment variable MISSING is not set"),
    ],
)
def test_bad_references(value: str, message: str) -> None:
    problems = problems_of(
        f"nodes:\n  w: {{type: '{C}:Words'}}\n  s:\n    type: '{C}:Shout'\n    suffix: '{value}'\n"
        "edges: [w -> s]\n"
    )
    assert summary(problems) == [(5, "s", message)]


def test_substituted_values_and_secrets_never_appear_in_messages() -> None:
    secret = "sk-live-0123456789"
    problems = problems_of(
        f"""\
        settings:
          end_timeout: ${{KEY}}
        nodes:
          w: {{type: "{C}:Words"}}
          k1: {{type: "{C}:Keyed", api_key: "${{KEY}}", retries: "${{KEY}}"}}
          k2: {{type: "{C}:Keyed", api_key: 424242424242}}
          k3: {{type: "${{KEY}}"}}
        edges:
          - w -> k1
          - w -> k2
          - w -> k3
        """,
        env={"KEY": secret},
    )
    assert summary(problems) == [
        (2, None, "setting 'end_timeout' expects float, got a str from ${KEY}"),
        (5, "k1", "param 'retries' expects int, got a str from ${KEY}"),
        (6, "k2", "param 'api_key' expects str, got a int"),
        (7, "k3", "unknown type '${KEY}'"),
    ]
    shown = "\n".join(str(p) for p in problems)
    assert secret not in shown
    assert "424242424242" not in shown


def test_secrets_are_hidden_even_in_errors_raised_by_processors() -> None:
    text = f"nodes:\n  w: {{type: '{C}:Words'}}\n  k: {{type: '{C}:Leaky', api_key: x}}\nedges: [w -> k]\n"
    by_override = problems_of(text, overrides=("k.api_key=hunter2-secret",))
    assert [(p.file, p.message) for p in by_override] == [
        ("test.yaml", "creating Leaky failed: RuntimeError: key <secret> was refused")
    ]
    by_env = problems_of(text.replace("api_key: x", "api_key: '${KEY}'"), env={"KEY": "hunter2-secret"})
    assert [p.message for p in by_env] == ["creating Leaky failed: RuntimeError: key ${KEY} was refused"]


def test_ordinary_variables_stay_readable_in_messages() -> None:
    """Only credentials are hidden: a path from ${INPUT} is shown, so the user sees which file is missing."""
    path = "/nowhere/speech-input.wav"
    text = (
        "nodes:\n  src: {type: source.wav, path: '${NAME}'}\n  out: {type: debug.null}\nedges: [src -> out]\n"
    )
    readable = problems_of(text.replace("NAME", "INPUT"), env={"INPUT": path})
    assert len(readable) == 1 and path in readable[0].message
    hidden = problems_of(text.replace("NAME", "SPEECH_TOKEN"), env={"SPEECH_TOKEN": path})
    assert len(hidden) == 1 and path not in hidden[0].message and "${SPEECH_TOKEN}" in hidden[0].message


def test_failing_constructor_is_a_problem() -> None:
    problems = problems_of(
        f"nodes:\n  w: {{type: '{C}:Words'}}\n  k: {{type: '{C}:Exploding'}}\nedges: [w -> k]\n"
    )
    assert summary(problems) == [(3, "k", "creating Exploding failed: RuntimeError: no device")]


def test_a_processors_own_check_is_reported_on_the_line_of_its_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    problems = problems_of(
        f"""\
        nodes:
          mic:
            type: source.wav
            frame_ms: 20
            path: {missing}
          out: {{type: debug.null}}
        edges: [mic -> out]
        """
    )
    assert [(p.line, p.node, p.key) for p in problems] == [(5, "mic", "path")]
    assert "not found" in problems[0].message


def test_overrides_are_typed() -> None:
    graph = config.load_text(
        f"nodes:\n  mic: {{type: '{C}:Beeps'}}\n  stt: {{type: '{C}:Listen16k'}}\n"
        f"  words: {{type: '{C}:Words'}}\nedges: [mic -> stt]\n",
        overrides=(
            "mic.sample_rate=16000",
            "mic.frames=2",
            "settings.end_timeout=1.5",
            "stt.queue.size=8",
            "stt.queue.overflow=drop_oldest",
            "words.words=[a, 'b c']",
        ),
        env={},
    )
    mic = graph.processors["mic"]
    assert isinstance(mic, Beeps)
    assert (mic.params.sample_rate, mic.params.frames) == (16000, 2)
    assert graph.end_timeout == 1.5
    inbox = graph.processors["stt"].inbox
    assert (inbox.maxsize, inbox.overflow) == (8, Overflow.DROP_OLDEST)
    words = graph.processors["words"]
    assert isinstance(words, Words)
    assert words.params.words == ["a", "b c"]


def test_bad_overrides_name_the_override() -> None:
    problems = problems_of(
        f"nodes:\n  words: {{type: '{C}:Words'}}\n  shout: {{type: '{C}:Shout'}}\nedges: [words -> shout]\n",
        overrides=("wrds.words=x", "shout.sufix=?", "settings.end_timeot=3", "shout", "words.words=3"),
    )
    assert [(p.file, p.line, p.node, p.message, p.fix) for p in problems] == [
        ("--set wrds.words", None, None, "unknown node 'wrds'", "did you mean 'words'?"),
        (
            "--set shout",
            None,
            None,
            "'shout' is not node.param=value",
            "e.g. --set vad.aggressiveness=3 or --set settings.end_timeout=5",
        ),
        (
            "--set settings.end_timeot",
            None,
            None,
            "unknown setting 'end_timeot'",
            "did you mean 'end_timeout'?",
        ),
        (
            "--set words.words",
            None,
            "words",
            "param 'words' expects list[str], got 3 (int)",
            "set words to a list of str",
        ),
        ("--set shout.sufix", None, "shout", "unknown param 'sufix'", "did you mean 'suffix'?"),
    ]


async def test_custom_type_by_import_path_runs(tmp_path: Path) -> None:
    path = tmp_path / "shouting.yaml"
    path.write_text(
        f"nodes:\n  words: {{type: '{C}:Words', words: [hey, you]}}\n"
        f"  shout: {{type: '{C}:Shout', suffix: '!!'}}\nedges:\n  - words -> shout\n"
    )
    assert config.check(path, env={}) == []
    graph = config.load(path, env={})
    assert graph.name == "shouting"
    assert isinstance(graph.processors["shout"], Shout)
    out = await run(graph)
    assert [f.text for f in out if isinstance(f, TextFrame)] == ["HEY!!", "YOU!!"]


async def test_registered_type_and_list_edges_and_merge_keys() -> None:
    graph = config.load_text(
        dedent(
            f"""\
            nodes:
              words: &words {{type: "{C}:Words", words: [ab]}}
              more: {{<<: *words, words: [cd]}}
              echo: {{type: tests.echo}}
            edges:
              - [words, echo]
              - more -> echo
            """
        ),
        env={},
    )
    assert isinstance(graph.processors["echo"], Echo)
    out = await run(graph)
    assert sorted(f.text for f in out if isinstance(f, TextFrame)) == ["abab", "cdcd"]


def test_audio_mismatch_without_auto_resample_fails_to_load() -> None:
    text = f"nodes:\n  mic: {{type: '{C}:Beeps'}}\n  stt: {{type: '{C}:Listen16k'}}\nedges:\n  - mic -> stt\n"
    with pytest.raises(ValidationError) as caught:
        config.load_text(text, "audio.yaml", env={})
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.node) == ("audio.yaml", 5, "stt")
    assert "1 problem found:" in str(caught.value)


async def test_auto_resample_inserts_a_resampler_that_delivers_the_consumers_rate() -> None:
    graph = config.load_text(
        dedent(
            f"""\
            settings: {{auto_resample: true}}
            nodes:
              mic: {{type: "{C}:Beeps", sample_rate: 48000, channels: 2, frames: 10}}
              stt: {{type: "{C}:Listen16k"}}
            edges:
              - mic -> stt
            """
        ),
        env={},
    )
    assert list(graph.processors) == ["mic", "resample_mic_stt", "stt"]
    assert graph.edges == [("mic", "resample_mic_stt"), ("resample_mic_stt", "stt")]
    assert isinstance(graph.processors["resample_mic_stt"], Resampler)
    out = await run(graph)  # Listen16k raises (an error frame) on anything but 16 kHz mono
    audio = [f for f in out if isinstance(f, AudioFrame)]
    assert {(f.sample_rate, f.channels) for f in audio} == {(16000, 1)}
    assert sum(f.num_samples for f in audio) == 10 * 320


def test_check_never_raises_and_load_raises_with_every_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    [problem] = config.check(missing)
    assert problem.file == str(missing)
    assert problem.message.startswith("cannot read the config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a: {type: nothing.here}\n  b: {type: nothing.there}\n")
    with pytest.raises(ValidationError) as caught:
        config.load(bad)
    assert [p.line for p in caught.value.problems] == [2, 3]


def test_parse_gives_the_annotated_spec() -> None:
    spec, problems = config.parse_text(
        dedent(
            f"""\
            description: demo
            nodes:
              k:
                type: "{C}:Keyed"
                api_key: ${{KEY:-dev}}
                queue: {{size: 2}}
            edges: []
            """
        ),
        "spec.yaml",
        env={},
    )
    assert problems == []
    assert spec is not None
    assert (spec.name, spec.description, spec.file) == ("spec", "demo", "spec.yaml")
    node = spec.nodes["k"]
    assert (node.type, node.params, node.queue, node.line) == (
        f"{C}:Keyed",
        {"api_key": "dev"},
        {"size": 2},
        3,
    )
    assert node.lines == {"type": 4, "api_key": 5, "queue": 6, "queue.size": 6}
    assert node.interpolated == {"api_key": "${KEY}"}


def test_an_unset_key_is_reported_once_not_again_by_the_node() -> None:
    text = """
nodes:
  src: {type: source.tone, sample_rate: 16000, duration: 0.1}
  stt: {type: stt.assemblyai, api_key: "${UNSET_ASSEMBLYAI_KEY}"}
  out: {type: debug.null}
edges: [src -> stt -> out]
"""
    problems = config.check_text(text, "keys.yaml", env={})
    assert [p.message for p in problems] == ["environment variable UNSET_ASSEMBLYAI_KEY is not set"]
    empty = config.check_text(text.replace("${UNSET_ASSEMBLYAI_KEY}", ""), "keys.yaml", env={})
    assert [p.message for p in empty] == ["api_key is empty"]  # written empty: the node's own words
