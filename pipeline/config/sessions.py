"""One new graph per connection, built afresh from a validated config (processors hold per-call state)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config.build import Compiled, build
from pipeline.errors import ValidationError
from pipeline.graph import Graph
from pipeline.sessions import ConversationKeeper


def session_graph(compiled: Compiled, session_id: str | None = None) -> Graph:
    """A new graph from the validated config, for one connection (processors hold per-call state).

    Every node that keeps conversations (``ConversationKeeper``: the recorder) is bound to
    ``session_id``; without one (the warm-up) they keep their own. Raises ``ValidationError`` if the
    environment changed since the config was checked.
    """
    fresh, problems = build(compiled.spec)  # never ``compiled``'s own processors: they outlive the call
    if problems:
        raise ValidationError(problems)
    graph = fresh.graph()
    if session_id is not None:
        for processor in graph.processors.values():
            if isinstance(processor, ConversationKeeper):
                processor.bind_session(session_id)
    return graph


def conversations_directory(compiled: Compiled) -> Path | None:
    """Where the config's conversation keeper (the recorder) saves conversations, if it has one."""
    for processor in compiled.processors.values():
        if isinstance(processor, ConversationKeeper):
            return processor.conversations_directory
    return None
