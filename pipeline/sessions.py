"""Conversations: one id for each, and the interface of nodes that keep one.

A server runs one new graph per connection. A node that keeps something per conversation (the
recorder's folder) says so by implementing ``ConversationKeeper``: the server binds it to the
conversation and asks it where saved conversations live — nothing is guessed from param names.
What the server learns about a conversation once it runs (a phone call's caller and call id) reaches
the keepers that take notes (``annotate``) through ``annotate_conversation``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
"""What a conversation id looks like: safe as a folder name and in a URL."""


RANDOM_BYTES = 6
"""Random part of an id: 48 bits. Several workers share one recordings folder and none knows the
others' ids, so the bits alone keep two conversations of the same second apart: at 10 new
conversations a second across a fleet, two ids meet about once in 10^5 years (24 bits: every 4 days)."""


def new_session_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxxxxxxxxxx`` in UTC: ids (and the folders they name) sort by start time; the
    hex tells conversations that started in the same second apart, in this process or any other."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(RANDOM_BYTES)


@runtime_checkable
class ConversationKeeper(Protocol):
    """A node that keeps each conversation it serves (a recorder)."""

    def bind_session(self, session_id: str) -> None:
        """This graph serves conversation ``session_id`` (called before the graph starts)."""

    @property
    def conversations_directory(self) -> Path:
        """The folder that holds one saved conversation per sub-folder (what the API lists)."""


@runtime_checkable
class ConversationNotes(Protocol):
    """A node that keeps facts about its conversation (the recorder: in ``transcript.json``)."""

    def annotate(self, metadata: Mapping[str, str]) -> None:
        """Keep ``metadata`` with the conversation (later keys replace earlier ones)."""


def annotate_conversation(processors: Iterable[object], metadata: Mapping[str, str]) -> None:
    """Tell every node of a conversation's graph that takes notes about ``metadata``."""
    for processor in processors:
        if isinstance(processor, ConversationNotes):
            processor.annotate(metadata)
