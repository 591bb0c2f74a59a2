"""``local.input`` and ``local.output``: this computer's microphone and speakers, through PortAudio.

PortAudio calls us on its own audio thread once per block. That thread must never wait for the event
loop, so each direction has a small lock-guarded buffer between the two: the microphone's drops its
oldest block when the graph falls behind (live audio is worth more than old audio), and the speaker's
plays silence when it runs dry. The loop is woken with ``call_soon_threadsafe`` only when someone is
waiting, so a busy loop never piles up callbacks.

See the devices with ``python -m transports.local`` (or
``python -c "import sounddevice; print(sounddevice.query_devices())"``); ``device`` takes a name, part
of one, or an index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pipeline.errors import FatalProcessorError, Problem, VoxgraphError
from pipeline.formats import AudioCaps, AudioFormat
from pipeline.frames import AudioFrame, BotAudioFrame, Frame, TTSStoppedFrame, TTSTextFrame, UserAudioFrame
from pipeline.params import param
from pipeline.processor import Processor, Source
from pipeline.sources import frame_ms_problem, samples_per_frame
from transports.playout import Playout

__all__ = ["AudioDeviceError", "MicrophoneInput", "SpeakerOutput", "list_devices"]

log = logging.getLogger("transports.local")

Latency = Literal["low", "high"] | float
_WARN_EVERY = 5.0  # seconds between repeated warnings about the same trouble
_DEVICE_DOC = "device name (or part of it) or index; null = the system default (python -m transports.local)"
_LATENCY_DOC = "PortAudio's device latency: 'low', 'high' or seconds"
_CLOSE_TIMEOUT = 2.0  # seconds we wait for PortAudio to stop a stream before leaving it behind
_STALL = 2.0  # seconds without a block from the microphone before we warn


class AudioDeviceError(VoxgraphError):
    """PortAudio is missing, or the sound device cannot be opened as asked."""


# --- PortAudio ----------------------------------------------------------------------------------


def _sounddevice() -> Any:
    """Import ``sounddevice`` (it loads the PortAudio library), with an error that says how to get it."""
    try:
        import sounddevice
    except ModuleNotFoundError:
        raise AudioDeviceError(
            "the local transports need the sounddevice package: pip install 'voxgraph[local]'"
        ) from None
    except OSError as error:  # sounddevice raises this when libportaudio is not installed
        raise AudioDeviceError(
            f"{error}: install it with 'sudo apt-get install libportaudio2' (Debian/Ubuntu) "
            "or 'brew install portaudio' (macOS)"
        ) from None
    return sounddevice


def list_devices() -> str:
    """PortAudio's device table (``>`` marks the default input, ``<`` the default output)."""
    return str(_sounddevice().query_devices())


def _open_stream(kind: Literal["input", "output"], device: str | int | None, **settings: Any) -> Any:
    """Open a raw int16 stream on ``device``; errors name the device and list the choices."""
    sd = _sounddevice()
    stream_class = sd.RawInputStream if kind == "input" else sd.RawOutputStream
    try:
        return stream_class(device=device, dtype="int16", **settings)
    except (ValueError, sd.PortAudioError) as error:
        wanted = "the default device" if device is None else f"device {device!r}"
        rate = settings.get("samplerate")
        raise AudioDeviceError(
            f"cannot open {wanted} for {kind} at {rate} Hz, {settings.get('channels')} channel(s): {error}\n"
            f"devices:\n{sd.query_devices()}"
        ) from None


async def _close_stream(stream: Any, owner: Processor, drain: bool = False) -> None:
    """Close ``stream``, bounded in time; ``drain`` first lets audio already in the device play out,
    otherwise it is discarded."""

    def close() -> None:
        if drain:
            stream.stop(ignore_errors=True)
        stream.close(ignore_errors=True)  # aborts a stream still running

    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await owner.run_in_thread(close)
    except TimeoutError:
        log.warning("%s: PortAudio did not close the stream within %.0fs", owner.name, _CLOSE_TIMEOUT)


def _wake(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Schedule ``callback`` on ``loop`` from PortAudio's thread (a closed loop means we are stopping)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _frame_problems(sample_rate: int, frame_ms: int, node: str) -> list[Problem]:
    """A problem when ``frame_ms`` is not a whole number of samples at ``sample_rate``."""
    if samples_per_frame(sample_rate, frame_ms) is None:
        return [frame_ms_problem(sample_rate, frame_ms, node)]
    return []


class _Trouble:
    """A counter that PortAudio's thread bumps, reported on the loop: a metric (seconds of audio
    affected) and a warning at most every ``_WARN_EVERY`` seconds."""

    def __init__(self, owner: Processor, metric: str, block_seconds: float, warning: str) -> None:
        self.owner = owner
        self.metric = metric  # name of the metric recorded
        self.block_seconds = block_seconds  # audio affected per count
        self.warning = warning  # %-format taking (node name, total)
        self._seen = 0
        self._warned_at = -_WARN_EVERY

    def update(self, total: int) -> None:
        """Report what was counted since the last call, if anything."""
        new, self._seen = total - self._seen, total
        if new <= 0:
            return
        self.owner.metrics.record(self.metric, new * self.block_seconds)
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(self.warning, self.owner.name, total)


# --- microphone ---------------------------------------------------------------------------------


class BlockQueue:
    """Bounded FIFO of audio blocks from the device thread to the loop; full means drop the oldest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # blocks held at most
        self.dropped = 0  # blocks discarded to make room, since the start
        self._blocks: deque[bytes] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    def put(self, block: bytes) -> bool:
        """Add ``block`` (never waits); True when the queue was empty, so the consumer may be asleep."""
        with self._lock:
            was_empty = not self._blocks
            if len(self._blocks) >= self.capacity:
                self._blocks.popleft()
                self.dropped += 1
            self._blocks.append(block)
        return was_empty

    def get(self) -> bytes | None:
        """The oldest block, or None when empty."""
        with self._lock:
            return self._blocks.popleft() if self._blocks else None


@dataclass(slots=True, kw_only=True)
class MicrophoneParams:
    """Params of ``local.input``."""

    device: str | int | None = param(None, doc=_DEVICE_DOC)
    sample_rate: int = param(16000, ge=1, doc="samples per second to capture (PortAudio or the OS converts)")
    frame_ms: int = param(20, gt=0, doc="milliseconds of audio per frame (one PortAudio block)")
    buffer_ms: int = param(
        1000, doc="audio held while the graph is busy; past it the oldest is dropped (with a warning)"
    )
    latency: Latency = param("low", doc=_LATENCY_DOC)


class MicrophoneInput(Source):
    """Captures mono audio from a microphone, one ``AudioFrame`` per ``frame_ms``, until stopped.

    The stream opens in ``on_start`` (a wrong device fails the start) but only starts capturing when
    the graph runs, so model loading elsewhere does not fill the buffer with stale audio.
    """

    type_name = "local.input"
    Params = MicrophoneParams
    params: MicrophoneParams
    produces: ClassVar[tuple[type[Frame], ...]] = (AudioFrame,)

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.blocks = BlockQueue(p.buffer_ms // p.frame_ms)
        """Captured blocks not yet sent; ``blocks.dropped`` counts overflow."""
        self.device_overflows = 0
        """Blocks PortAudio flagged as input overflow (the driver lost audio before we saw it)."""
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()  # set (on the loop) when a block arrives or the stream ends
        self._stream_ended = False
        seconds = p.frame_ms / 1000
        self._dropped = _Trouble(
            self, "dropped", seconds, "%s: the graph fell behind the microphone; %d blocks dropped so far"
        )
        self._overflows = _Trouble(
            self, "device_overflow", seconds, "%s: the sound card lost input %d times so far"
        )

    def check(self) -> list[Problem]:
        p = self.params
        problems = _frame_problems(p.sample_rate, p.frame_ms, self.name)
        if p.buffer_ms < p.frame_ms:
            message = f"buffer_ms {p.buffer_ms} holds less than one frame"
            problems.append(Problem(message, f"use at least frame_ms ({p.frame_ms})", self.name, "buffer_ms"))
        return problems

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return AudioFormat(self.params.sample_rate, 1)

    async def on_start(self) -> None:
        self._loop = asyncio.get_running_loop()
        p = self.params
        self._stream = await self.run_in_thread(
            lambda: _open_stream(
                "input",
                p.device,
                samplerate=p.sample_rate,
                channels=1,
                blocksize=samples_per_frame(p.sample_rate, p.frame_ms),
                latency=p.latency,
                callback=self._on_block,
                finished_callback=self._on_finished,
            )
        )

    async def generate(self) -> AsyncIterator[Frame]:
        stream = self._stream
        if stream is None:
            return
        await self.run_in_thread(stream.start)
        rate = self.params.sample_rate
        try:
            while True:
                self._dropped.update(self.blocks.dropped)
                self._overflows.update(self.device_overflows)
                block = self.blocks.get()
                if block is not None:
                    yield UserAudioFrame(pcm=block, sample_rate=rate, channels=1)
                    continue
                if self._stream_ended:
                    if self._stream is None:  # we closed it: the graph is stopping
                        return
                    raise FatalProcessorError("the microphone stream stopped (was the device unplugged?)")
                # A block arriving now wakes us through the loop, so clearing first loses nothing.
                self._ready.clear()
                try:
                    async with asyncio.timeout(_STALL):
                        await self._ready.wait()
                except TimeoutError:
                    log.warning("%s: no audio from the microphone for %.0fs", self.name, _STALL)
        finally:
            await self.on_stop()  # release the device before the end goes out, not after

    async def on_stop(self) -> None:
        """Close the stream (also called when capture ends, so it runs at most once per stream)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await _close_stream(stream, self)

    # Called on PortAudio's thread: copy, queue, wake the loop only if it may be waiting.
    def _on_block(self, data: Any, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.device_overflows += 1
        if self.blocks.put(bytes(data)) and self._loop is not None:
            _wake(self._loop, self._ready.set)

    def _on_finished(self) -> None:
        self._stream_ended = True
        if self._loop is not None:
            _wake(self._loop, self._ready.set)


# --- speaker ------------------------------------------------------------------------------------


class PlaybackBuffer:
    """Bytes queued for the sound card: the loop writes, PortAudio's thread reads. Bounded, and only
    whole sample frames go in or out, so a partial write can never shift the byte order of a stream."""

    def __init__(self, capacity: int, frame_bytes: int) -> None:
        self.frame_bytes = frame_bytes  # bytes per sample frame (2 x channels)
        self.capacity = capacity - capacity % frame_bytes  # bytes held at most
        self._data = bytearray()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def write(self, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as fits (whole sample frames); returns the bytes taken."""
        with self._lock:
            room = self.capacity - len(self._data)
            taken = min(len(data), room)
            taken -= taken % self.frame_bytes
            self._data += data[:taken]
        return taken

    def read_into(self, out: Any) -> int:
        """Move up to ``len(out)`` bytes into ``out``; returns how many (the caller fills the rest)."""
        with self._lock:
            count = min(len(out), len(self._data))
            out[:count] = self._data[:count]
            del self._data[:count]
        return count

    def clear(self) -> int:
        """Forget everything queued (barge-in); returns the bytes dropped."""
        with self._lock:
            dropped = len(self._data)
            self._data.clear()
        return dropped


@dataclass(slots=True, kw_only=True)
class SpeakerParams:
    """Params of ``local.output``."""

    device: str | int | None = param(None, doc=_DEVICE_DOC)
    sample_rate: int | None = param(
        None,
        ge=1,
        doc="rate to open the device at; null = the rate of the audio it gets (the OS converts). "
        "Set it to have negotiation put audio.resample in front",
    )
    audio: Literal["bot", "user", "any"] = param(
        "bot", doc="which audio to play: the bot's (TTS), the user's (monitoring) or any (in turn, not mixed)"
    )
    frame_ms: int = param(20, gt=0, doc="milliseconds per PortAudio block: how fast a barge-in silences it")
    buffer_ms: int = param(200, doc="audio queued ahead of the device; cleared at once on barge-in")
    latency: Latency = param("low", doc=_LATENCY_DOC)


class SpeakerOutput(Processor):
    """Plays audio on a sound card; every frame then passes on, so it can also sit mid-graph.

    The device's clock paces playback: frames go into a buffer of ``buffer_ms`` that PortAudio drains
    in real time, and writing waits while it is full. ``Playout`` reports the bot starting and stopping
    to speak and the text being spoken. A barge-in empties the buffer, so the speaker falls silent
    within one block; running dry mid-reply plays silence and is counted in ``underruns``.
    """

    type_name = "local.output"
    Params = SpeakerParams
    params: SpeakerParams
    handles: ClassVar[tuple[type[Frame], ...]] = (AudioFrame, TTSTextFrame, TTSStoppedFrame)
    produces: ClassVar[tuple[type[Frame], ...]] = handles  # passed on: a recorder may follow

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        if p.sample_rate is not None:
            self.accepts_audio = AudioCaps.of(p.sample_rate)  # type: ignore[misc]  # negotiation reads the node
        self.playout = Playout(self, realtime=False)  # the device paces; see the class docstring
        self.underruns = 0
        """Blocks that ran short while a reply was playing (audio came slower than real time)."""
        self.device_underflows = 0
        """Blocks PortAudio flagged as output underflow (our callback came too late)."""
        self.buffer: PlaybackBuffer | None = None
        self._stream: Any = None
        self._format: AudioFormat | None = None  # what the open stream plays
        self._loop: asyncio.AbstractEventLoop | None = None
        self._played = asyncio.Event()  # set on the loop after a block was read, if _want_wake
        self._want_wake = False  # read and cleared by PortAudio's thread
        self._playing = False  # bot audio was written and more is expected: running dry is an underrun
        seconds = p.frame_ms / 1000
        self._underruns = _Trouble(
            self, "underrun", seconds, "%s: bot audio came slower than real time; %d short blocks so far"
        )
        self._underflows = _Trouble(
            self, "device_underflow", seconds, "%s: the sound card ran dry %d times so far"
        )

    def check(self) -> list[Problem]:
        p = self.params
        problems = [] if p.sample_rate is None else _frame_problems(p.sample_rate, p.frame_ms, self.name)
        if p.frame_ms > p.buffer_ms:
            message = f"frame_ms {p.frame_ms} must be at most buffer_ms {p.buffer_ms}"
            problems.append(Problem(message, "use e.g. frame_ms: 20, buffer_ms: 200", self.name))
        return problems

    def output_format(self, incoming: AudioFormat | None) -> AudioFormat | None:
        return incoming

    async def on_start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.run_in_thread(self._check_device)
        if self.params.sample_rate is not None:
            await self._open(AudioFormat(self.params.sample_rate, 1))

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TTSTextFrame):
            if self.params.audio != "user":
                await self.playout.text(frame)
        elif isinstance(frame, TTSStoppedFrame):
            await self.playout.finished(self._finish_reply)  # runs once the reply's audio is written
        elif isinstance(frame, AudioFrame) and self._plays(frame):
            if isinstance(frame, BotAudioFrame):
                await self.playout.audio(frame, self._write)
            else:
                await self._write(frame)
        await self.push(frame)

    async def on_interrupt(self) -> None:
        if self.buffer is not None:
            self.buffer.clear()
        self._playing = False
        self.playout.interrupted()

    async def on_stop(self) -> None:
        if self.ended or self.inbox.closed:  # cancelled: nobody is listening any more
            await self.playout.close(drain=False)
            if self.buffer is not None:
                self.buffer.clear()
            await self._close()
            return
        await self.playout.close(drain=True)
        try:
            await self._finish_reply()
        finally:
            await self._close(drain=True)

    def _plays(self, frame: AudioFrame) -> bool:
        wanted = self.params.audio
        return wanted == "any" or (wanted == "bot") == isinstance(frame, BotAudioFrame)

    async def _write(self, frame: AudioFrame) -> None:
        """Queue the frame's audio for the device, waiting while the buffer is full."""
        fmt = AudioFormat(frame.sample_rate, frame.channels)
        if fmt != self._format:
            await self._reopen(fmt)
        buffer = self.buffer
        assert buffer is not None
        self._playing = self._playing or isinstance(frame, BotAudioFrame)
        whole = len(frame.pcm) - len(frame.pcm) % buffer.frame_bytes  # a torn last sample is dropped
        pending = memoryview(frame.pcm)[:whole]
        while pending:
            pending = pending[buffer.write(pending) :]
            if pending:
                await self._until(lambda: buffer.capacity - len(buffer) >= buffer.frame_bytes, "room")

    async def _finish_reply(self) -> None:
        """The reply's audio is all written: let the device play it out (``Playout`` then reports
        the bot silent)."""
        self._playing = False  # running dry from here on is the reply's end, not an underrun
        stuck: AudioDeviceError | None = None
        try:
            await self._drain()
        except AudioDeviceError as error:
            stuck = error
        self._underruns.update(self.underruns)
        self._underflows.update(self.device_underflows)
        if stuck is not None:
            raise stuck

    async def _drain(self) -> None:
        """Wait until the device has taken all that is queued and played its own buffer."""
        buffer = self.buffer
        if buffer is None or not len(buffer):
            return
        try:
            await self._until(lambda: not len(buffer), "drained")
        except AudioDeviceError:
            buffer.clear()  # the device will never play it
            raise
        if self._stream is not None:
            await asyncio.sleep(self._stream.latency)

    async def _until(self, done: Callable[[], bool], what: str) -> None:
        """Wait until ``done()``, re-checking after each block the device plays; bounded."""
        limit = 1.0 + 4 * self.params.buffer_ms / 1000
        deadline = time.monotonic() + limit
        while True:
            self._played.clear()  # before arming, so a block played from now on wakes us
            self._want_wake = True
            if done():
                self._want_wake = False
                return
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    await self._played.wait()
            except TimeoutError:
                raise AudioDeviceError(
                    f"the speaker stopped taking audio: not {what} within {limit:.1f}s"
                ) from None

    async def _reopen(self, fmt: AudioFormat) -> None:
        fixed = self.params.sample_rate
        if fixed is not None and fmt.sample_rate != fixed:
            raise AudioDeviceError(
                f"got {fmt} audio but the speaker plays {fixed} Hz: put audio.resample in front "
                "or set settings.auto_resample: true"
            )
        if self._stream is not None:
            await self._drain()
            await self._close(drain=True)
        await self._open(fmt)

    async def _open(self, fmt: AudioFormat) -> None:
        p = self.params
        frame_bytes = 2 * fmt.channels
        self.buffer = PlaybackBuffer(fmt.sample_rate * p.buffer_ms // 1000 * frame_bytes, frame_bytes)
        blocksize = max(1, fmt.sample_rate * p.frame_ms // 1000)

        def open_and_start() -> Any:
            stream = _open_stream(
                "output",
                p.device,
                samplerate=fmt.sample_rate,
                channels=fmt.channels,
                blocksize=blocksize,
                latency=p.latency,
                callback=self._on_block,
            )
            stream.start()
            return stream

        self._stream = await self.run_in_thread(open_and_start)
        self._format = fmt

    async def _close(self, drain: bool = False) -> None:
        stream, self._stream, self._format = self._stream, None, None
        if stream is not None:
            await _close_stream(stream, self, drain)

    def _check_device(self) -> None:
        sd = _sounddevice()
        device = self.params.device
        try:
            sd.query_devices(device, kind="output")
        except (ValueError, sd.PortAudioError) as error:
            wanted = "no default output device" if device is None else f"no output device {device!r}"
            raise AudioDeviceError(f"{wanted} ({error})\ndevices:\n{sd.query_devices()}") from None

    # Called on PortAudio's thread: copy what is queued, silence for the rest, never wait.
    def _on_block(self, out: Any, frames: int, time_info: Any, status: Any) -> None:
        buffer = self.buffer
        count = buffer.read_into(out) if buffer is not None else 0
        if count < len(out):
            out[count:] = bytes(len(out) - count)
            if self._playing:
                self.underruns += 1
        if status.output_underflow:
            self.device_underflows += 1
        if self._want_wake and self._loop is not None:
            self._want_wake = False
            _wake(self._loop, self._played.set)


if __name__ == "__main__":
    print(list_devices())
