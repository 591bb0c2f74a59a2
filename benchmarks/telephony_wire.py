"""Carrier wire cost: microseconds per 20 ms media message, in (parse + G.711 decode) and out
(G.711 encode + JSON), for each carrier and codec.

Every call parses 50 inbound and sends 50 outbound media messages a second on the event loop, so the
cost per message bounds how many calls one core's wire work allows (``calls_per_core``: a core spent
on nothing else). Measured on real speech (the LibriVox clips of ``tests/speech.py`` at 8 kHz, or
16 kHz for L16), messages built as the carrier sends them; medians of ``--repeat`` runs.

Run from the repo root: ``python benchmarks/telephony_wire.py`` (about 3 s), ``--quick`` for a smoke
run. JSON lines go to stdout, a table to stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MESSAGES_PER_SECOND = 50  # 20 ms each way


def speech(rate: int, seconds: float) -> bytes:
    """LibriVox clips back to back at ``rate``, s16le mono, ``seconds`` long."""
    import soxr

    from tests.speech import LIBRIVOX, librivox, read_wav

    clips = np.concatenate([read_wav(librivox(name))[0] for name in LIBRIVOX])
    total = round(seconds * 16000)
    joined = np.resize(clips, total)
    return (joined if rate == 16000 else soxr.resample(joined, 16000, rate).astype(np.int16)).tobytes()


def cases() -> list[tuple[str, str, int, Callable[[], Any], Callable[[int, str], str]]]:
    """(carrier, codec, rate, a started wire's factory, inbound message builder)."""
    from transports.telephony.telnyx_wire import TelnyxWire
    from transports.telephony.twilio_wire import TwilioWire

    def twilio() -> TwilioWire:
        wire = TwilioWire()
        wire.parse(json.dumps({"event": "start", "start": {"streamSid": "MZ1", "callSid": "CA1"}}))
        return wire

    def twilio_media(n: int, payload: str) -> str:
        media = {"track": "inbound", "chunk": str(n), "timestamp": str(20 * n), "payload": payload}
        return json.dumps(
            {"event": "media", "sequenceNumber": str(n + 1), "media": media, "streamSid": "MZ1"}
        )

    def telnyx(codec: str, rate: int) -> Callable[[], TelnyxWire]:
        def make() -> TelnyxWire:
            wire = TelnyxWire(send_codec=codec, send_rate=rate)
            fmt = {"encoding": codec, "sample_rate": rate, "channels": 1}
            start = {"call_control_id": "v2:1", "media_format": fmt}
            wire.parse(json.dumps({"event": "start", "stream_id": "S1", "start": start}))
            return wire

        return make

    def telnyx_media(n: int, payload: str) -> str:
        media = {"track": "inbound", "chunk": str(n), "timestamp": str(20 * n), "payload": payload}
        return json.dumps(
            {"event": "media", "sequence_number": str(n + 1), "stream_id": "S1", "media": media}
        )

    return [
        ("twilio", "PCMU", 8000, twilio, twilio_media),
        ("telnyx", "PCMU", 8000, telnyx("PCMU", 8000), telnyx_media),
        ("telnyx", "PCMA", 8000, telnyx("PCMA", 8000), telnyx_media),
        ("telnyx", "L16", 16000, telnyx("L16", 16000), telnyx_media),
    ]


def measure(messages: int, repeat: int) -> list[dict[str, Any]]:
    from transports.telephony import wire as carrier_wire

    records = []
    for carrier, codec_name, rate, make, build in cases():
        pcm = speech(rate, messages * 0.020)
        size = rate // MESSAGES_PER_SECOND * 2
        frames = [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]
        codec = carrier_wire.codec(codec_name)
        inbound = [build(n, base64.b64encode(codec.encode(f)).decode()) for n, f in enumerate(frames)]
        parse_us, send_us = [], []
        for _ in range(repeat):
            wire = make()
            start = time.perf_counter()
            for text in inbound:
                wire.parse(text)
            parse_us.append((time.perf_counter() - start) / len(inbound) * 1e6)
            start = time.perf_counter()
            for frame in frames:
                wire.media(frame)
            send_us.append((time.perf_counter() - start) / len(frames) * 1e6)
        parse, send = statistics.median(parse_us), statistics.median(send_us)
        per_call_us = (parse + send) * MESSAGES_PER_SECOND  # per second of call
        records.append(
            {
                "benchmark": "telephony_wire",
                "carrier": carrier,
                "codec": codec_name,
                "sample_rate": rate,
                "messages": len(frames),
                "repeat": repeat,
                "parse_us_per_message": round(parse, 2),
                "send_us_per_message": round(send, 2),
                "core_share_per_call": round(per_call_us / 1e6, 5),
                "calls_per_core": round(1e6 / per_call_us),
            }
        )
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/telephony_wire.py",
        description="Microseconds per 20 ms carrier media message, in and out, per carrier and codec.",
        epilog="JSON lines go to stdout, a table to stderr.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (500 messages, one repeat)")
    parser.add_argument("--repeat", type=int, default=None, help="medians of K runs (default 5, --quick 1)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(here.parent), *(p for p in sys.path if Path(p or ".").resolve() != here)]
    records = measure(500 if args.quick else 5000, repeat)
    for record in records:
        print(json.dumps(record, separators=(", ", ": ")), flush=True)
    print(
        f"{'carrier':<8}{'codec':<6}{'rate':>7}{'parse us':>10}{'send us':>9}{'calls/core':>12}",
        file=sys.stderr,
    )
    for r in records:
        print(
            f"{r['carrier']:<8}{r['codec']:<6}{r['sample_rate']:>7}{r['parse_us_per_message']:>10.1f}"
            f"{r['send_us_per_message']:>9.1f}{r['calls_per_core']:>12}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
