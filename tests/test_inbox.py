"""The bounded two-lane inbox: priority, overflow policies, interruption and closing."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from pipeline.frames import (
    UPSTREAM,
    BotAudioFrame,
    DataFrame,
    EndFrame,
    Frame,
    SpokenTextFrame,
    TextFrame,
    Uninterruptible,
    UserAudioFrame,
    UserStartedSpeakingFrame,
)
from pipeline.inbox import SYSTEM_LANE_LIMIT, Inbox, InboxOverflowError, Overflow


@dataclasses.dataclass(slots=True)
class KeptFrame(Uninterruptible, DataFrame):
    note: str = ""


def text(i: int) -> TextFrame:
    return TextFrame(text=str(i))


async def drain(inbox: Inbox) -> list[Frame]:
    frames = []
    while len(inbox):
        frame, _ = await inbox.get()
        frames.append(frame)
    return frames


def test_needs_room_for_one_frame() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Inbox(0)


async def test_data_keeps_order_and_system_frames_overtake_it() -> None:
    inbox = Inbox(8)
    for i in range(3):
        await inbox.put(text(i))
    started = UserStartedSpeakingFrame()
    inbox.put_system(started)
    assert await drain(inbox) == [started, text(0), text(1), text(2)]


async def test_direction_travels_with_the_frame() -> None:
    inbox = Inbox(2)
    await inbox.put(text(1), UPSTREAM)
    assert await inbox.get() == (text(1), UPSTREAM)


async def test_get_waits_for_a_frame() -> None:
    inbox = Inbox(2)
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await inbox.put(text(7))
    frame, _ = await asyncio.wait_for(getter, 1)
    assert frame == text(7)


async def test_block_makes_the_sender_wait_until_there_is_room() -> None:
    inbox = Inbox(2)
    await inbox.put(text(0))
    await inbox.put(text(1))
    putter = asyncio.ensure_future(inbox.put(text(2)))
    await asyncio.sleep(0)
    assert not putter.done()
    assert len(inbox) == 2
    await inbox.get()
    await asyncio.wait_for(putter, 1)
    assert await drain(inbox) == [text(1), text(2)]
    assert inbox.dropped == 0


async def test_put_nowait_refuses_when_full_under_block() -> None:
    inbox = Inbox(1)
    assert inbox.put_nowait(text(0))
    assert not inbox.put_nowait(text(1))
    assert await drain(inbox) == [text(0)]


async def test_drop_oldest_discards_the_oldest_interruptible_frame() -> None:
    inbox = Inbox(3, Overflow.DROP_OLDEST)
    frames = [UserAudioFrame(pcm=bytes([i, 0])) for i in range(5)]
    for frame in frames:
        await inbox.put(frame)
    assert await drain(inbox) == frames[2:]
    assert inbox.dropped == 2


async def test_an_interruption_keeps_user_audio_and_drops_the_bots() -> None:
    inbox = Inbox(8)
    user, bot = UserAudioFrame(pcm=b"\x01\x00"), BotAudioFrame(pcm=b"\x02\x00")
    for frame in (user, bot, text(0), user):
        await inbox.put(frame)
    assert inbox.drop_interruptible() == 2
    assert await drain(inbox) == [user, user]


async def test_drop_oldest_keeps_the_end_and_other_uninterruptible_frames() -> None:
    inbox = Inbox(3, Overflow.DROP_OLDEST)
    end = EndFrame()
    kept = KeptFrame(note="k")
    await inbox.put(kept)
    await inbox.put(end)
    for i in range(4):
        await inbox.put(UserAudioFrame(pcm=bytes([i, 0])))
    assert await drain(inbox) == [kept, end, UserAudioFrame(pcm=bytes([3, 0]))]
    assert inbox.dropped == 3


async def test_drop_oldest_blocks_when_only_uninterruptible_frames_are_queued() -> None:
    inbox = Inbox(1, Overflow.DROP_OLDEST)
    await inbox.put(EndFrame())
    putter = asyncio.ensure_future(inbox.put(UserAudioFrame()))
    await asyncio.sleep(0)
    assert not putter.done()
    await inbox.get()
    await asyncio.wait_for(putter, 1)
    assert len(inbox) == 1


async def test_drop_interruptible_keeps_uninterruptible_frames_in_order() -> None:
    inbox = Inbox(8)
    kept: Frame = KeptFrame(note="k")
    end: Frame = EndFrame()
    for frame in [text(0), kept, text(1), end, text(2)]:
        await inbox.put(frame)
    assert inbox.drop_interruptible() == 3
    assert await drain(inbox) == [kept, end]
    assert inbox.dropped == 3


async def test_drop_interruptible_releases_blocked_senders() -> None:
    inbox = Inbox(1)
    await inbox.put(text(0))
    putter = asyncio.ensure_future(inbox.put(text(1)))
    await asyncio.sleep(0)
    inbox.drop_interruptible()
    await asyncio.wait_for(putter, 1)
    assert await drain(inbox) == [text(1)]


async def test_a_cancelled_sender_passes_its_wakeup_to_the_next_one() -> None:
    inbox = Inbox(1)
    await inbox.put(text(0))
    first = asyncio.ensure_future(inbox.put(text(1)))
    second = asyncio.ensure_future(inbox.put(text(2)))
    await asyncio.sleep(0)
    await inbox.get()  # room for one: the first sender is woken ...
    first.cancel()  # ... but is cancelled before it can use the room
    await asyncio.wait_for(second, 1)
    assert first.cancelled()
    assert await drain(inbox) == [text(2)]


async def test_close_discards_queued_frames_and_releases_senders() -> None:
    inbox = Inbox(1)
    await inbox.put(text(0))
    putter = asyncio.ensure_future(inbox.put(text(1)))
    await asyncio.sleep(0)
    inbox.close()
    await asyncio.wait_for(putter, 1)
    assert len(inbox) == 0
    await inbox.put(text(2))
    inbox.put_system(UserStartedSpeakingFrame())
    assert len(inbox) == 0
    assert inbox.dropped == 4


def test_a_flood_of_system_frames_is_reported() -> None:
    inbox = Inbox(1)
    for _ in range(SYSTEM_LANE_LIMIT):
        inbox.put_system(UserStartedSpeakingFrame())
    with pytest.raises(InboxOverflowError, match="stuck"):
        inbox.put_system(UserStartedSpeakingFrame())


async def test_upstream_frames_never_wait_behind_a_full_downstream_lane() -> None:
    inbox = Inbox(2)
    for i in range(2):
        await inbox.put(text(i))
    assert not inbox.put_nowait(text(9))  # downstream data waits for room
    spoken = SpokenTextFrame(text="heard")
    assert inbox.put_nowait(spoken, UPSTREAM)  # ...upstream traffic does not (no neighbour deadlock)
    await asyncio.wait_for(inbox.put(SpokenTextFrame(text="again"), UPSTREAM), 1.0)
    queued = [inbox.get_nowait() for _ in range(4)]
    assert [item[0] for item in queued if item][2:] == [spoken, SpokenTextFrame(text="again")]
