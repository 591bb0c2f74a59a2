"""UDP ports for peer connections within ``server.rtc_ports``, so a firewall needs only that range open.

aiortc has no such option: aioice binds each host candidate's socket to port 0. ``use_port_range``
gives aioice's ICE module an event loop view whose ``create_datagram_endpoint`` binds a free port of
the range instead (the next one after the last taken, wrapping around).
"""

from __future__ import annotations

import asyncio
import itertools
import types
from typing import Any

__all__ = ["PortRange", "parse_ports", "use_port_range"]


def parse_ports(text: str) -> range | None:
    """``"50000-50199"`` -> the ports; ``""`` -> None (any port)."""
    if not text:
        return None
    first, _, last = text.partition("-")
    return range(int(first), int(last) + 1)


class PortRange:
    """Binds datagram endpoints asked for on port 0 to a free port of ``ports``."""

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self._next = itertools.cycle(ports)

    async def create_datagram_endpoint(
        self, loop: asyncio.AbstractEventLoop, factory: Any, local_addr: Any = None, **kwargs: Any
    ) -> Any:
        if local_addr is None or local_addr[1] != 0:
            return await loop.create_datagram_endpoint(factory, local_addr=local_addr, **kwargs)
        for _ in range(len(self.ports)):
            port = next(self._next)
            try:
                address = (local_addr[0], port)
                return await loop.create_datagram_endpoint(factory, local_addr=address, **kwargs)
            except OSError:
                continue
        raise OSError(f"no free UDP port in {self.ports.start}-{self.ports.stop - 1} (server.rtc_ports)")


class _LoopView:
    """The running loop, with datagram endpoints bound within a range."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: PortRange) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Any, local_addr: Any = None, **kwargs: Any) -> Any:
        return await self._ports.create_datagram_endpoint(self._loop, factory, local_addr, **kwargs)


def use_port_range(ports: range) -> None:
    """Bind every ICE host candidate aioice gathers from now on within ``ports`` (process-wide)."""
    from aioice import ice

    binder = PortRange(ports)
    view = types.ModuleType("asyncio")
    view.__dict__.update(asyncio.__dict__)
    view.get_running_loop = lambda: _LoopView(asyncio.get_running_loop(), binder)  # type: ignore[attr-defined]
    ice.asyncio = view  # type: ignore[attr-defined]
