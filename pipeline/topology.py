"""Graph shape: one topological sort for running a graph and for negotiating its formats, and one walk
for a node that looks for another along its wired edges (the VAD a file source waits on)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from pipeline.processor import Processor

Edge = tuple[str, str]
NodeT = TypeVar("NodeT", bound="Processor")


def topological_names(nodes: Mapping[str, Any], edges: list[Edge]) -> list[str]:
    """Node names, producers first (Kahn's algorithm, YAML order on ties); nodes on a cycle are left out."""
    indegree = dict.fromkeys(nodes, 0)
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        indegree[b] += 1
        children[a].append(b)
    ready = deque(n for n in nodes if indegree[n] == 0)
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for child in children[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    return order


def nearest_of(
    kind: type[NodeT], start: Iterable[Processor], toward: Literal["downstream", "upstream"]
) -> NodeT | None:
    """The nearest ``kind`` node among ``start`` or beyond them along wired edges (breadth first)."""
    queue = deque(start)
    seen: set[int] = set()
    while queue:
        node = queue.popleft()
        if isinstance(node, kind):
            return node
        if id(node) not in seen:
            seen.add(id(node))
            queue.extend(node._downstream if toward == "downstream" else node._upstream)
    return None
