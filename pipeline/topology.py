"""Orders graph nodes: one topological sort for running a graph and for negotiating its formats."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

Edge = tuple[str, str]


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
