"""Drawing graphs: Mermaid and DOT text that the tools accept whatever the node names are."""

from __future__ import annotations

import itertools
import re
from typing import ClassVar

import pytest

from pipeline import render
from pipeline.formats import AudioFormat
from pipeline.frames import Frame, TextFrame
from pipeline.graph import Graph
from pipeline.processor import Processor
from processors.debug import NullSink
from tests.custom_nodes import Beeps, Shout, Words

MERMAID_NODE = re.compile(r'    (\w+)(\(\[|\[)"(.*)"(\]\)|\])')
MERMAID_EDGE = re.compile(r'    (\w+) (-->(?:\|"[^"]*"\|)?) (\w+)')


class Quoted(Processor):
    type_name: ClassVar[str] = 'say "hi"'
    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)


def mermaid_nodes(text: str) -> dict[str, tuple[str, str]]:
    """Node id -> (label, opening bracket) of every node line."""
    found = {}
    for line in text.splitlines()[1:]:
        match = MERMAID_NODE.fullmatch(line)
        if match:
            found[match[1]] = (match[3], match[2])
    return found


def mermaid_edges(text: str) -> list[tuple[str, str, str]]:
    return [(m[1], m[2], m[3]) for line in text.splitlines() if (m := MERMAID_EDGE.fullmatch(line))]


def chain(*names: str) -> Graph:
    processors: dict[str, Processor] = {names[0]: Words()}
    processors.update({name: Shout() for name in names[1:]})
    return Graph(processors, list(itertools.pairwise(names)))


def test_every_line_is_a_node_or_an_edge() -> None:
    graph = Graph(
        {"words": Words(), "shout": Shout(), "beeps": Beeps(), "sink": NullSink()},
        [("words", "shout"), ("shout", "sink"), ("beeps", "sink")],
    )
    text = render.mermaid(graph, {("beeps", "sink"): AudioFormat(48000)})
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert text.endswith("\n")
    nodes, edges = mermaid_nodes(text), mermaid_edges(text)
    assert len(lines) == 1 + len(nodes) + len(edges)
    assert [label for label, _ in nodes.values()] == [
        "words<br/><small>Words</small>",  # a class loaded by import path has no type name
        "shout<br/><small>Shout</small>",
        "beeps<br/><small>Beeps</small>",
        "sink<br/><small>debug.null</small>",
    ]
    shapes = {label.split("<")[0]: bracket for label, bracket in nodes.values()}
    assert shapes == {"words": "([", "shout": "[", "beeps": "([", "sink": "(["}
    assert edges == [
        ("n_words", "-->", "n_shout"),
        ("n_shout", "-->", "n_sink"),
        ("n_beeps", '-->|"48000 Hz mono"|', "n_sink"),
    ]


@pytest.mark.parametrize("name", ["mic-left", "to-16k", "a-b-c", "end", "_x", "o", "graph"])
def test_node_ids_are_plain_identifiers(name: str) -> None:
    text = render.mermaid(chain("words", name))
    ids = list(mermaid_nodes(text))
    assert len(ids) == 2
    for node_id in ids:
        assert re.fullmatch(r"n_[A-Za-z0-9_]+", node_id), node_id  # never a keyword such as 'end'
    assert f'"{name}<br/><small>Shout</small>"' in text
    assert mermaid_edges(text) == [("n_words", "-->", ids[1])]


def test_hyphens_and_underscores_give_distinct_ids() -> None:
    text = render.mermaid(chain("a", "a-b", "a_b"))
    assert len(set(mermaid_nodes(text))) == 3


def test_escaped_ids_cannot_collide_with_real_names() -> None:
    text = render.mermaid(chain("a", "a-b", "a_2d_b"))
    assert len(set(mermaid_nodes(text))) == 3


def test_quotes_are_escaped_in_mermaid_labels() -> None:
    graph = Graph({'say "hi"': Words(), "q": Quoted()}, [('say "hi"', "q")])
    text = render.mermaid(graph)
    labels = [label for label, _ in mermaid_nodes(text).values()]
    assert labels == [
        "say #quot;hi#quot;<br/><small>Words</small>",
        "q<br/><small>say #quot;hi#quot;</small>",
    ]
    assert all('"' not in label for label in labels)
    [(source, _, _)] = mermaid_edges(text)
    assert re.fullmatch(r"n_[A-Za-z0-9_]+", source)


def test_dot_quotes_names_labels_and_the_graph_name() -> None:
    graph = Graph({'say "hi"': Words(), "to-16k": Quoted()}, [('say "hi"', "to-16k")], name='my "graph"\\')
    text = render.dot(graph)
    lines = text.splitlines()
    assert lines[0] == 'digraph "my \\"graph\\"\\\\" {'
    assert lines[-1] == "}"
    assert '    "say \\"hi\\"" [label="say \\"hi\\"\\nWords", shape=oval];' in lines
    assert '    "to-16k" [label="to-16k\\nsay \\"hi\\"", shape=oval];' in lines
    assert '    "say \\"hi\\"" -> "to-16k";' in lines


def test_dot_labels_edges_with_formats_and_draws_middle_nodes_as_boxes() -> None:
    graph = Graph({"beeps": Beeps(), "sink": NullSink()}, [("beeps", "sink")])
    text = render.dot(graph, {("beeps", "sink"): AudioFormat(16000, 2)})
    assert '    "beeps" -> "sink" [label="16000 Hz 2 channels"];' in text.splitlines()
    middle = render.dot(chain("words", "shout", "louder"))
    assert '    "shout" [label="shout\\nShout"];' in middle.splitlines()
    assert '    "words" -> "shout";' in middle.splitlines()
