"""The caller's ``#`` ends the turn end to end: real speech, then the key, on a fake Twilio call.

The VAD is set to wait ``STOP_SECS`` of silence before it calls the speech over (as a noisy line keeps
it open); PocketSphinx, ahead of it, finds the end of the words with its own endpointer, so the final
transcript is there before the VAD's stop. The key must bring the reply without waiting for that stop.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fakes.carrier import FakeTwilio
from tests.test_phone_barge_in import (
    Storyteller,
    _no_requests,  # noqa: F401  (autouse: the storyteller's requests)
    clip,
    serving,
)
from tests.test_phone_twilio import (
    _fresh,  # noqa: F401  (autouse: the auth token)
    ended,
)

STOP_SECS = 4.0
KEY_AFTER = 0.8
"""Seconds of silence after the words before the caller presses ``#``: PocketSphinx's endpointer has
called the words over by then, the VAD has not."""
RECOGNISER_FIRST = "mic -> stt -> vad -> turns -> llm -> tts -> line -> recorder -> speaker"


@pytest.mark.slow
async def test_the_end_turn_key_brings_the_reply_before_the_vad_stops(tmp_path: Path) -> None:
    async with serving(tmp_path, stt="stt.pocketsphinx", stop_secs=STOP_SECS, edges=RECOGNISER_FIRST) as (
        server,
        _,
    ):
        carrier = FakeTwilio(server.url)
        await carrier.call()
        await carrier.silence(0.3)
        spoken_end = await carrier.speak(clip("0880"))
        await carrier.silence(KEY_AFTER)
        await carrier.dtmf("#")
        pressed = time.monotonic()
        await carrier.silence_until(lambda: bool(carrier.of("media")), "the reply", STOP_SECS + 10)
        first_audio = carrier.times_of("media")[0]
        await carrier.stop()
        await ended(server)
    assert carrier.violations == []
    print(
        f"'#' {(pressed - spoken_end) * 1000:.0f} ms after the words; first reply audio "
        f"{(first_audio - pressed) * 1000:.0f} ms after the key, "
        f"{(first_audio - spoken_end) * 1000:.0f} ms after the words (the VAD waits {STOP_SECS:g} s)"
    )
    assert first_audio < spoken_end + STOP_SECS  # the key, not the VAD's stop, ended the turn
    [request] = Storyteller.requests
    assert request[-1]["role"] == "user" and request[-1]["content"].strip()
    assert carrier.of("mark")  # the reply was played, sentence by sentence
