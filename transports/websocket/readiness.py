"""Whether this server takes a new conversation now, and why not: one answer for ``/readyz``, ``/load``,
``/health`` and every ``/ws`` connection.

While models load or the server drains, a connection is refused *before* the websocket upgrade (HTTP
503 with ``Retry-After``): a load balancer can retry it on another worker, and nothing starts here. A
full server (``max_sessions`` reached, or admission finds no headroom) by default accepts the upgrade
and closes with an ``error`` message and 1013, which a page can show; with ``full_refusal: http`` it
refuses before the upgrade too, so a balancer retries on a worker with room. ``/readyz`` says so
either way, so a balancer stops sending new conversations while it lasts. Pure: no sockets, no clocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.capacity import Decision
from transports.websocket import protocol

__all__ = ["Refusal", "refusal"]

RETRY_AFTER_LOADING = 5
"""Seconds a client is asked to wait while models load (a balancer may try another worker at once)."""
RETRY_AFTER_DRAINING = 1
"""Seconds while draining: this worker will not take it again, another one can now."""
RETRY_AFTER_FULL = 5
"""Seconds while full (refused over HTTP): a slot frees when a conversation ends or the load drops."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a new conversation cannot start here now."""

    kind: str  # loading | draining | full (max_sessions) | load (admission)
    reason: str  # short, for /readyz and /load
    message: str  # for the client: what happened and what to do
    before_upgrade: bool = True  # HTTP 503 before the websocket upgrade (else: upgraded, error + close)

    @property
    def retry_after(self) -> int:
        """Seconds for the ``Retry-After`` header."""
        if self.kind == "loading":
            return RETRY_AFTER_LOADING
        return RETRY_AFTER_DRAINING if self.kind == "draining" else RETRY_AFTER_FULL

    @property
    def close_code(self) -> int:
        """The websocket close code when refused after the upgrade."""
        return protocol.CLOSE_GOING_AWAY if self.kind == "draining" else protocol.CLOSE_TRY_AGAIN_LATER


def refusal(
    *,
    loading: bool,
    draining: bool,
    sessions: int,
    max_sessions: int,
    admission: Callable[[], Decision],
    full_over_http: bool = False,
) -> Refusal | None:
    """Why one more conversation cannot start (the first reason that applies), or None: ready.

    ``admission`` is asked only when the hard limits leave room (it samples every session's load).
    ``full_over_http``: a full server refuses before the upgrade too (``full_refusal: http``).
    """
    if loading:
        return Refusal("loading", "loading models", "the server is loading models; try again shortly")
    if draining:
        return Refusal("draining", "draining", "the server is shutting down; try again")
    if sessions >= max_sessions:
        slots = "the one conversation slot is in use"
        if max_sessions != 1:
            slots = f"all {max_sessions} conversation slots are in use"
        return Refusal("full", f"full: {slots}", f"server busy: {slots}; try again later", full_over_http)
    decision = admission()
    if not decision.admit:
        message = f"{decision.reason}; try again later"
        return Refusal("load", f"full: {decision.reason}", message, full_over_http)
    return None
