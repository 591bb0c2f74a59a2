"""``StreamingSTT``'s public hooks are all a provider needs: an in-memory provider gets chunking, the
end of turn on the VAD's stop, reconnects that replay the unconfirmed audio, and the end of stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pipeline.formats import AudioCaps
from pipeline.frames import TranscriptFrame, UserStoppedSpeakingFrame
from pipeline.graph import Graph
from pipeline.params import param
from pipeline.testing import Captured, Collector, run_graph
from processors.stt.streaming import SessionError, StreamingParams, StreamingSTT, StreamSession
from tests.drivers import Driver, Step
from tests.speech import audio_frames, silence, tone

BYTES_PER_SECOND = 32000


@dataclass(slots=True, kw_only=True)
class MemoryParams(StreamingParams):
    api_key: str = param("key", secret=True)
    reconnect_backoff: float = param(0.0, ge=0)


class MemorySession(StreamSession):
    def __init__(self) -> None:
        super().__init__()
        self.audio = bytearray()  # everything sent to it
        self.turns_ended: list[float] = []  # end_turn requests (stream seconds)
        self.inbox: asyncio.Queue[str | SessionError | None] = asyncio.Queue(maxsize=8)  # what it "says"


class MemorySTT(StreamingSTT[MemorySession, MemoryParams]):
    """Each text put in a session's inbox is a final covering everything it was sent."""

    accepts_audio: ClassVar[AudioCaps] = AudioCaps.of(16000, 1)
    service = "Memory"
    key_variable = "MEMORY_KEY"
    transient_codes = frozenset({1011})

    def setup(self) -> None:
        self.sessions: list[MemorySession] = []

    @property
    def ends_turn_on_vad_stop(self) -> bool:
        return True

    async def open_session(self) -> MemorySession:
        self.sessions.append(MemorySession())
        return self.sessions[-1]

    async def send_audio(self, session: MemorySession, pcm: bytes) -> None:
        session.audio += pcm

    async def end_turn(self, session: MemorySession, at: float) -> None:
        session.turns_ended.append(at)

    async def receive(self, session: MemorySession) -> SessionError | None:
        while True:
            said = await session.inbox.get()
            if not isinstance(said, str):
                return said
            heard_until = session.base + len(session.audio) / BYTES_PER_SECOND
            await self.push_final(said, "en", None, heard_until)

    async def finish_session(self, session: MemorySession) -> bool:
        await session.inbox.put(None)
        await asyncio.wait_for(session.ended.wait(), 1)
        return True

    async def close_session(self, session: MemorySession) -> None:
        pass


async def until(condition: Callable[[], object]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def run(node: MemorySTT, steps: list[Step], out: Collector | None = None) -> Captured:
    out = out or Collector(name="out")
    graph = Graph({"driver": Driver(steps), "stt": node, "out": out}, [("driver", "stt"), ("stt", "out")])
    return await run_graph(graph, timeout=10)


async def test_a_drop_replays_the_unconfirmed_audio_and_asks_again_for_the_end_of_turn() -> None:
    node = MemorySTT(name="stt")

    async def drop() -> None:
        first = node.sessions[0]
        await until(lambda: first.turns_ended)  # the stop waited for its audio, then asked
        await first.inbox.put(SessionError(1011, "server restarted"))
        await until(lambda: len(node.sessions) == 2 and node.sessions[1].turns_ended)

    stop = UserStoppedSpeakingFrame(stream_time=0.6)
    out = await run(node, [*audio_frames(tone(0.6)), stop, drop, *audio_frames(silence(0.2))])
    first, second = node.sessions
    assert first.turns_ended == [0.6] and second.turns_ended == [0.6]  # the new session never had it
    assert bytes(second.audio).startswith(bytes(first.audio))  # no final yet: the whole turn again
    assert len(second.audio) == 0.8 * BYTES_PER_SECOND  # then the rest
    (error,) = out.errors
    assert error.message == "Memory session dropped (server restarted (code 1011)); reconnecting"


async def test_audio_a_final_covers_is_not_replayed() -> None:
    node = MemorySTT(name="stt")
    out = Collector(name="out")

    async def final_then_drop() -> None:
        first = node.sessions[0]
        await until(lambda: len(first.audio) >= 0.4 * BYTES_PER_SECOND)
        await first.inbox.put("hello")
        await out.wait_for(TranscriptFrame, timeout=5)
        await first.inbox.put(SessionError(1011, "gone"))
        await until(lambda: len(node.sessions) == 2)

    result = await run(node, [*audio_frames(tone(0.4)), final_then_drop, *audio_frames(tone(0.2))], out)
    assert result.transcripts == ["hello"]
    assert len(node.sessions[1].audio) == 0.2 * BYTES_PER_SECOND  # only what came after the final
