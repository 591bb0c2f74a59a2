"""A processor's bounded input queue, with a priority lane for system frames.

Why not ``asyncio.Queue``: we need system frames to overtake data, interruptions to drop only
interruptible frames, and a drop-oldest policy for real-time audio — and a hop through the queue
sits on every 20 ms audio frame, so it is kept to a deque and at most one future per wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from enum import Enum

from pipeline.errors import VoxgraphError
from pipeline.frames import DOWNSTREAM, Direction, Frame


class Overflow(Enum):
    """What a full inbox does with one more data frame."""

    BLOCK = "block"
    """The sender waits until there is room (backpressure). Right for text and files."""
    DROP_OLDEST = "drop_oldest"
    """The oldest interruptible frame is discarded. Right for live audio: never fall behind."""


class InboxOverflowError(VoxgraphError, RuntimeError):
    """The system lane is full: something emits system frames far faster than they are handled."""


SYSTEM_LANE_LIMIT = 1024
UPSTREAM_SLACK = 256
"""Upstream frames may overfill the data lane by this many: a sink pacing audio has a full inbox,
and if its upstream push waited for room in its neighbour's full inbox while that neighbour waits
for room in the sink's, both would wait forever. Upstream traffic is sparse (errors, spoken text)."""


class Inbox:
    """Bounded two-lane queue. One consumer (the processor's worker), any number of senders."""

    __slots__ = (
        "_data",
        "_getter",
        "_putters",
        "_system",
        "closed",
        "dropped",
        "maxsize",
        "overflow",
    )

    def __init__(self, maxsize: int = 64, overflow: Overflow = Overflow.BLOCK) -> None:
        if maxsize < 1:
            raise ValueError("an inbox needs room for at least one frame (maxsize >= 1)")
        self.maxsize = maxsize  # bound of the data lane, in frames
        self.overflow = overflow  # policy when the data lane is full
        self.dropped = 0  # frames discarded by drop-oldest, interruption or a closed inbox
        self.closed = False  # set when the consumer has finished; later frames are discarded
        self._data: deque[tuple[Frame, Direction]] = deque()
        self._system: deque[tuple[Frame, Direction]] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._data) + len(self._system)

    def put_system(self, frame: Frame, direction: Direction = DOWNSTREAM) -> None:
        """Queue a system frame ahead of all data. Never blocks."""
        if self.closed:
            self.dropped += 1
            return
        if len(self._system) >= SYSTEM_LANE_LIMIT:
            raise InboxOverflowError(
                f"more than {SYSTEM_LANE_LIMIT} system frames queued; is a processor stuck?"
            )
        self._system.append((frame, direction))
        self._wake_getter()

    async def put(self, frame: Frame, direction: Direction = DOWNSTREAM) -> None:
        """Queue a data or control frame, applying the overflow policy when full."""
        if self.closed:
            self.dropped += 1
            return
        data = self._data
        limit = self._limit(direction)
        if len(data) >= limit:
            if self.overflow is Overflow.DROP_OLDEST and self._drop_one():
                pass
            else:
                await self._wait_for_room(limit)
                if self.closed:
                    self.dropped += 1
                    return
        data.append((frame, direction))
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def put_nowait(self, frame: Frame, direction: Direction = DOWNSTREAM) -> bool:
        """Queue without waiting; returns False (frame not queued) when full under BLOCK."""
        if self.closed:
            self.dropped += 1
            return True
        if len(self._data) >= self._limit(direction) and not (
            self.overflow is Overflow.DROP_OLDEST and self._drop_one()
        ):
            return False
        self._data.append((frame, direction))
        self._wake_getter()
        return True

    def _limit(self, direction: Direction) -> int:
        return self.maxsize if direction is DOWNSTREAM else self.maxsize + UPSTREAM_SLACK

    def get_nowait(self) -> tuple[Frame, Direction] | None:
        """Next frame if one is queued (system lane first), else None; never suspends."""
        if self._system:
            return self._system.popleft()
        if self._data:
            item = self._data.popleft()
            if self._putters:
                self._wake_putter()
            return item
        return None

    def arrival(self) -> asyncio.Future[None]:
        """A future set when the next frame is queued: the worker awaits it directly (no coroutine)."""
        getter = self._getter = asyncio.get_running_loop().create_future()
        return getter

    async def get(self) -> tuple[Frame, Direction]:
        """Next frame: system lane first, then data in arrival order."""
        while (item := self.get_nowait()) is None:
            try:
                await self.arrival()
            finally:
                self._getter = None
        return item

    def drop_interruptible(self) -> int:
        """Discard queued data frames that an interruption may drop; keep the rest in order."""
        data = self._data
        if not data:
            return 0
        kept = [item for item in data if item[0].uninterruptible]
        dropped = len(data) - len(kept)
        if dropped:
            data.clear()
            data.extend(kept)
            self.dropped += dropped
            for _ in range(min(dropped, len(self._putters))):
                self._wake_putter()
        return dropped

    def close(self) -> None:
        """The consumer is gone: discard what is queued and release every waiting sender."""
        self.closed = True
        self.dropped += len(self._data)
        self._data.clear()
        self._system.clear()
        while self._putters:
            self._wake_putter()

    def _drop_one(self) -> bool:
        data = self._data
        for index, (frame, _) in enumerate(data):
            if frame.live or not frame.uninterruptible:
                del data[index]
                self.dropped += 1
                return True
        return False

    async def _wait_for_room(self, limit: int) -> None:
        while len(self._data) >= limit and not self.closed:
            putter = asyncio.get_running_loop().create_future()
            self._putters.append(putter)
            try:
                await putter
            except BaseException:
                putter.cancel()
                if not putter.cancelled() and len(self._data) < limit:
                    self._wake_putter()  # we were woken but won't use the room: pass it on
                raise

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def _wake_putter(self) -> None:
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
                return
