"""Drawing a graph as Mermaid (renders on GitHub and in most Markdown viewers) or Graphviz DOT."""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.formats import AudioFormat
from pipeline.graph import Edge, Graph
from pipeline.processor import Processor, Source

EdgeLabels = Mapping[Edge, AudioFormat | None]


def mermaid(graph: Graph, labels: EdgeLabels | None = None) -> str:
    """A ``flowchart LR`` with one box per node (name and type) and audio formats on edges."""
    lines = ["flowchart LR"]
    for name, processor in graph.processors.items():
        text = f"{name}<br/><small>{_type_of(processor)}</small>"
        open_, close = ("([", "])") if _is_terminal(graph, processor) else ("[", "]")
        lines.append(f'    {_node_id(name)}{open_}"{_escape(text)}"{close}')
    for a, b in graph.edges:
        fmt = labels.get((a, b)) if labels else None
        arrow = f'-->|"{fmt}"|' if fmt else "-->"
        lines.append(f"    {_node_id(a)} {arrow} {_node_id(b)}")
    return "\n".join(lines) + "\n"


def dot(graph: Graph, labels: EdgeLabels | None = None) -> str:
    """A Graphviz digraph, left to right, with the same content as ``mermaid``."""
    lines = [
        f"digraph {_quote(graph.name)} {{",
        "    rankdir=LR;",
        "    node [shape=box, fontname=Helvetica];",
    ]
    for name, processor in graph.processors.items():
        shape = ", shape=oval" if _is_terminal(graph, processor) else ""
        lines.append(f"    {_quote(name)} [label={_quote(name + chr(10) + _type_of(processor))}{shape}];")
    for a, b in graph.edges:
        fmt = labels.get((a, b)) if labels else None
        label = f" [label={_quote(str(fmt))}]" if fmt else ""
        lines.append(f"    {_quote(a)} -> {_quote(b)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _type_of(processor: Processor) -> str:
    return processor.type_name or type(processor).__name__


def _is_terminal(graph: Graph, processor: Processor) -> bool:
    return isinstance(processor, Source) or processor in graph.sinks


def _node_id(name: str) -> str:
    """Letters and digits kept, ``_`` doubled, anything else ``_<hex>_``: distinct names, distinct ids."""
    return "n_" + "".join(_id_char(c) for c in name)


def _id_char(c: str) -> str:
    if c.isascii() and c.isalnum():
        return c
    return "__" if c == "_" else f"_{ord(c):x}_"


def _escape(text: str) -> str:
    return text.replace('"', "#quot;")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
