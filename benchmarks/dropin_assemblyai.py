"""The served AssemblyAI route (``configs/serve-assemblyai.yaml``) against ``stt.whisper`` in a graph.

Two figures, as JSON lines on stdout:

* ``latency``: end of speech -> final transcript, on the same LibriVox clip streamed in real time: once
  through the official SDK to the served ``/v3/ws`` (the first ``Turn`` with ``end_of_turn``), once
  with the same VAD and Whisper nodes in a local graph (the ``TranscriptFrame`` leaving it). Both count
  from the moment the audio holding the clip's last sample was fed in.
* ``capacity``: N SDK clients streaming the clip at once, in real time: each stream's latency, and
  whether every stream got its final (``kept_up``: all did, p95 under ``--budget`` seconds).

Run: ``python -m benchmarks.dropin_assemblyai [--streams 1,2,4,6] [--budget 3] [--set KEY=VALUE]``
(``--set`` changes the served config, e.g. ``stt.interim_interval_ms=0``; the in-graph run keeps its
own). Load average is recorded: on a machine shared with other work the figures are pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config
from pipeline.capacity import LoadMeter
from pipeline.config import session_graph
from pipeline.frames import AudioFrame, Frame, TranscriptFrame
from pipeline.processor import Processor
from transports.websocket.server import VoiceServer

CONFIG = Path(__file__).parent.parent / "configs" / "serve-assemblyai.yaml"
CLIP = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")
RATE = 16000
LEAD, TAIL = 0.5, 2.5  # seconds of silence around the clip
CHUNK_SECONDS = 0.05
IN_GRAPH = """
name: whisper-in-a-graph
settings: {{auto_resample: true}}
nodes:
  mic: {{type: source.wav, path: "{path}", realtime: true, trailing_silence: {tail}}}
  vad: {{type: vad.silero, start_secs: 0.15, stop_secs: 0.5, pause_secs: 0.2}}
  stt: {{type: stt.whisper, word_timestamps: true, interim_interval_ms: {interims}}}
edges:
  - mic -> vad -> stt
"""


def clip() -> tuple[bytes, float]:
    """The clip between silences (s16le) and where its speech ends, in seconds of the stream."""
    with wave.open(str(CLIP), "rb") as file:
        samples = np.frombuffer(file.readframes(file.getnframes()), dtype=np.int16)
    lead, tail = np.zeros(round(LEAD * RATE), np.int16), np.zeros(round(TAIL * RATE), np.int16)
    return np.concatenate([lead, samples, tail]).tobytes(), LEAD + len(samples) / RATE


async def served_stream(port: int, pcm: bytes, speech_end: float) -> float | None:
    """Stream ``pcm`` in real time through the SDK; seconds from the speech's end to the final turn."""
    from assemblyai.streaming import v3

    loop = asyncio.get_running_loop()
    final: asyncio.Future[float] = loop.create_future()
    begun = asyncio.Event()
    options = v3.StreamingClientOptions(
        api_key="bench", api_host=f"ws://127.0.0.1:{port}", connect_timeout=10
    )
    client = v3.AsyncStreamingClient(options)

    def on_turn(_client: Any, event: Any) -> None:
        if event.end_of_turn and not final.done():
            final.set_result(loop.time())

    client.on(v3.StreamingEvents.Begin, lambda _c, _e: begun.set())
    client.on(v3.StreamingEvents.Turn, on_turn)
    await client.connect(v3.StreamingParameters(sample_rate=RATE))  # type: ignore[call-arg]
    await asyncio.wait_for(begun.wait(), 30)
    step = round(CHUNK_SECONDS * RATE) * 2
    started = loop.time()
    for i, offset in enumerate(range(0, len(pcm), step)):
        await asyncio.sleep(max(0.0, started + i * CHUNK_SECONDS - loop.time()))  # a microphone's pace
        await client.stream(pcm[offset : offset + step].ljust(step, b"\0"))
    try:
        arrived = await asyncio.wait_for(asyncio.shield(final), 30)
    except TimeoutError:
        arrived = None
    await client.disconnect(terminate=True)
    # The chunk holding the last speech sample was sent when its 50 ms had passed.
    fed = started + (speech_end // CHUNK_SECONDS) * CHUNK_SECONDS
    return None if arrived is None else arrived - fed


async def in_graph(speech_end: float, interims: int) -> float | None:
    """The same VAD and Whisper in a local graph fed in real time; seconds from speech end to final."""
    text = IN_GRAPH.format(path=CLIP, tail=TAIL + LEAD, interims=interims)
    compiled, problems = config.compile_text(text, "<bench>")
    assert compiled is not None, problems
    graph = session_graph(compiled)
    loop = asyncio.get_running_loop()
    heard = 0.0
    fed_at: float | None = None
    final: float | None = None

    def left(processor: Processor, frame: Frame, direction: Any) -> None:
        nonlocal heard, fed_at, final
        if isinstance(frame, AudioFrame):
            heard += frame.duration
            if fed_at is None and heard >= speech_end - LEAD:  # the file has no lead-in
                fed_at = loop.time()
        elif isinstance(frame, TranscriptFrame) and final is None:
            final = loop.time()

    graph.output_handler = left
    await asyncio.wait_for(graph.run(), 120)
    return None if final is None or fed_at is None else final - fed_at


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,2,4,6", help="concurrent stream counts to try")
    parser.add_argument("--repeat", type=int, default=3, help="latency runs (served, then in a graph)")
    parser.add_argument("--interims", type=int, default=700, help="interim_interval_ms of both recognisers")
    parser.add_argument("--set", action="append", default=[], help="config override for the server")
    parser.add_argument("--budget", type=float, default=3.0, help="p95 latency (s) that still keeps up")
    args = parser.parse_args()
    pcm, speech_end = clip()
    compiled, problems = config.compile_text(
        CONFIG.read_text(),
        str(CONFIG),
        [
            "server.port=0",
            "server.max_sessions=32",
            f"stt.interim_interval_ms={args.interims}",
            *args.set,
        ],
    )
    assert compiled is not None, problems
    server = VoiceServer(compiled, meter=LoadMeter(cpu_clock=lambda: 0.0, machine_clock=lambda: None))
    await server.start()
    await server.warm_up()
    try:
        for _ in range(args.repeat):  # alternated, so a change in the machine's load hits both alike
            served = await served_stream(server.port, pcm, speech_end)
            local = await in_graph(speech_end, args.interims)
            emit(
                {
                    "figure": "latency",
                    "clip": CLIP.name,
                    "interim_interval_ms": args.interims,
                    "served_route_s": _round(served),
                    "stt_whisper_in_graph_s": _round(local),
                    "load_average": os.getloadavg()[0],
                }
            )
        for streams in (int(n) for n in args.streams.split(",")):
            latencies = await asyncio.gather(
                *(served_stream(server.port, pcm, speech_end) for _ in range(streams))
            )
            got = sorted(x for x in latencies if x is not None)
            p95 = got[min(len(got) - 1, round(0.95 * (len(got) - 1)))] if got else None
            emit(
                {
                    "figure": "capacity",
                    "streams": streams,
                    "interim_interval_ms": args.interims,
                    "finals": len(got),
                    "latency_p50_s": _round(statistics.median(got)) if got else None,
                    "latency_p95_s": _round(p95),
                    "kept_up": len(got) == streams and p95 is not None and p95 <= args.budget,
                    "load_average": os.getloadavg()[0],
                }
            )
    finally:
        await server.stop()


def emit(record: dict[str, Any]) -> None:
    print(json.dumps({"benchmark": "dropin_assemblyai", "time": time.time(), **record}), flush=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


if __name__ == "__main__":
    asyncio.run(main())
