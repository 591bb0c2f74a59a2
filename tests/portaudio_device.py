"""A real PortAudio sound card with no hardware, for testing ``local.input`` and ``local.output``.

ALSA's ``file`` PCM plugin reads capture audio from ``infile`` and writes playback audio to ``file``.
Stacked on the ``null`` PCM with both files FIFOs, the thread at the far end of each FIFO *is* the
sound card: ``VirtualMic`` writes one block of audio per period and ``VirtualSpeaker`` reads one per
period, so PortAudio's own audio thread runs our stream callbacks in real time. PortAudio's ALSA host
API lists every PCM the configuration defines, and ``ALSA_CONFIG_PATH`` points ALSA at ours.

Why not the plain ``null`` PCM: it has no clock, so PortAudio calls the callback ~500,000 times a
second. Why FIFOs and not files: a FIFO blocks, which is what gives the device a clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
MIC = "voxgraph_mic"
SPEAKER = "voxgraph_speaker"
PIPE_BYTES = 4096  # FIFO capacity (the kernel's minimum): the device-side buffer is kept small

_CONFIG = """\
<{system}>
pcm.{mic} {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{mic_fifo}"
    format "raw"
    hint.description "Voxgraph test microphone"
}}
pcm.{speaker} {{
    type file
    slave.pcm "null"
    file "{speaker_fifo}"
    format "raw"
    hint.description "Voxgraph test speaker"
}}
"""


class _Clocked(threading.Thread):
    """A thread that does one step per period, like a sound card's clock; it never catches up a
    backlog in a burst (a blocked step just delays the next ones)."""

    def __init__(self, fifo: Path, period: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        # O_RDWR: opening never blocks, and ALSA's end never sees EOF or SIGPIPE while we live.
        self.fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.period = period  # seconds per step
        self.steps = 0  # steps done so far
        self.stopping = threading.Event()
        self.changed = threading.Condition()

    def run(self) -> None:
        due = time.monotonic()
        while not self.stopping.is_set():
            self.step()
            with self.changed:
                self.steps += 1
                self.changed.notify_all()
            due = max(due + self.period, time.monotonic() - self.period)
            self.stopping.wait(max(0.0, due - time.monotonic()))

    def step(self) -> None:
        raise NotImplementedError

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Block (call it through ``asyncio.to_thread``) until ``done()``; TimeoutError names ``what``."""
        with self.changed:
            if not self.changed.wait_for(done, timeout):
                raise TimeoutError(f"{self.name}: {what} did not happen within {timeout:g}s")

    def close(self) -> None:
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
        if self.is_alive():
            self.join(timeout=2.0)
        os.close(self.fd)


class VirtualMic(_Clocked):
    """Writes ``block_ms`` of mono s16le audio per period into the capture FIFO: what ``play`` was
    given, then silence."""

    def __init__(self, fifo: Path, sample_rate: int, block_ms: int = 20) -> None:
        super().__init__(fifo, block_ms / 1000, "virtual-mic")
        self.block_bytes = 2 * sample_rate * block_ms // 1000
        self._pending = bytearray()
        self._lock = threading.Lock()

    def play(self, pcm: bytes) -> None:
        """Queue audio for the microphone to pick up next (padded with silence to whole blocks)."""
        with self._lock:
            self._pending += pcm
            self._pending += bytes(-len(self._pending) % self.block_bytes)

    def step(self) -> None:
        with self._lock:
            block = bytes(self._pending[: self.block_bytes]) or bytes(self.block_bytes)
            del self._pending[: self.block_bytes]
        while not self.stopping.is_set():
            try:
                os.write(self.fd, block)  # atomic: a block is far below PIPE_BUF
                return
            except BlockingIOError:  # nobody is capturing: hold the block, like a full device buffer
                select.select([], [self.fd], [], 0.05)

    def wait_written(self, blocks: int, timeout: float = 10.0) -> None:
        """Block until ``blocks`` blocks (audio or silence) have gone into the device."""
        self.wait_until(lambda: self.steps >= blocks, timeout, f"{blocks} blocks written")


class VirtualSpeaker(_Clocked):
    """Reads the playback FIFO at ``sample_rate`` x ``channels`` s16le in real time; keeps all it heard."""

    def __init__(self, fifo: Path, sample_rate: int, channels: int = 1, block_ms: int = 10) -> None:
        super().__init__(fifo, block_ms / 1000, "virtual-speaker")
        self.block_bytes = 2 * channels * sample_rate * block_ms // 1000
        self.heard = bytearray()  # everything played, in order (append-only, under ``changed``)

    def step(self) -> None:
        try:
            data = os.read(self.fd, self.block_bytes)
        except BlockingIOError:
            return  # nothing is playing
        with self.changed:
            self.heard += data

    def wait_heard(self, done: Callable[[bytearray], bool], timeout: float = 10.0, what: str = "") -> None:
        """Block until ``done(heard so far)`` (called under the lock: keep no reference to it)."""
        self.wait_until(lambda: done(self.heard), timeout, what or "the expected audio")


@dataclass
class SoundCard:
    """The virtual devices of one test, and their PortAudio names."""

    mic: VirtualMic
    speaker: VirtualSpeaker
    mic_name: str = MIC
    speaker_name: str = SPEAKER


def _reinitialise_portaudio() -> None:
    """PortAudio enumerates devices once, at initialisation; make it read ALSA's config again."""
    import sounddevice  # type: ignore[import-untyped]

    sounddevice._terminate()
    sounddevice._initialize()


@contextlib.contextmanager
def virtual_sound_card(
    directory: Path,
    *,
    mic_audio: bytes = b"",
    mic_rate: int = 16000,
    speaker_rate: int = 24000,
    speaker_channels: int = 1,
) -> Iterator[SoundCard]:
    """Define the devices in ``directory``, make PortAudio see them, and clock them for the block.

    ``mic_audio`` is what the microphone picks up first (mono s16le at ``mic_rate``), then silence.

    Streams left open at the end are closed by re-initialising PortAudio before the clocks stop.
    """
    if not SYSTEM_ALSA_CONF.exists():
        raise RuntimeError(f"{SYSTEM_ALSA_CONF} is missing: apt-get install libasound2-data")
    mic_fifo, speaker_fifo = directory / "mic.fifo", directory / "speaker.fifo"
    os.mkfifo(mic_fifo)
    os.mkfifo(speaker_fifo)
    config = directory / "asound.conf"
    config.write_text(
        _CONFIG.format(
            system=SYSTEM_ALSA_CONF, mic=MIC, speaker=SPEAKER, mic_fifo=mic_fifo, speaker_fifo=speaker_fifo
        )
    )
    mic = VirtualMic(mic_fifo, mic_rate)
    mic.play(mic_audio)
    speaker = VirtualSpeaker(speaker_fifo, speaker_rate, speaker_channels)
    previous = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = str(config)
    try:
        _reinitialise_portaudio()
        mic.start()
        speaker.start()
        yield SoundCard(mic, speaker)
    finally:
        if previous is None:
            os.environ.pop("ALSA_CONFIG_PATH", None)
        else:
            os.environ["ALSA_CONFIG_PATH"] = previous
        _reinitialise_portaudio()
        mic.close()
        speaker.close()
