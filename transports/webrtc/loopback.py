"""Loopback ICE candidates: aioice leaves 127.0.0.1 out of its host candidates, so a server (or a
test) on a machine whose only interface is loopback would offer none and ICE would never connect."""

from __future__ import annotations

__all__ = ["offer_loopback_candidates"]


def offer_loopback_candidates() -> None:
    """Add 127.0.0.1 to the host addresses aioice gathers candidates on (idempotent, process-wide)."""
    from aioice import ice

    gather = ice.get_host_addresses
    if getattr(gather, "with_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = gather(use_ipv4, use_ipv6)
        return ["127.0.0.1", *addresses] if use_ipv4 and "127.0.0.1" not in addresses else addresses

    with_loopback.with_loopback = True  # type: ignore[attr-defined]
    ice.get_host_addresses = with_loopback
