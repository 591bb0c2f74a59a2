"""Twenty simultaneous phone calls on the light test graph stay real time (one server process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.fakes.carrier import FakeTwilio
from tests.spoken_replies import HeardTap
from tests.test_phone_twilio import (
    _fresh,  # noqa: F401  (autouse: the auth token, counters reset)
    ended,
    serving,
)

CALLS = 20


@pytest.mark.slow
async def test_twenty_calls_at_once_stay_real_time(tmp_path: Path) -> None:
    async with serving(tmp_path) as (server, _):
        carriers = [FakeTwilio(server.url, call_number=n + 1) for n in range(CALLS)]

        async def one(carrier: FakeTwilio) -> None:
            await carrier.call()
            await carrier.speak(bytes(2 * 8000 * 2), dtmf_at={60: "1"})  # 2 s of line noise, key 1 at 1.2 s
            await carrier.until(
                lambda: len(carrier.played.marks) == 3 and carrier.queued_seconds == 0, "reply", 20
            )
            await carrier.stop()

        await asyncio.wait_for(asyncio.gather(*(one(c) for c in carriers)), 60)
        await ended(server, 30)
    lateness = []
    for carrier in carriers:
        assert carrier.violations == []
        assert len(carrier.played.pcm) / 2 / 8000 == pytest.approx(0.9, abs=0.03)
        times = np.array(carrier.times_of("media"))
        lateness.append(times[-1] - times[0])
    assert len(HeardTap.spoken) == 3 * CALLS
    # each reply's 0.9 s went out over about its own duration (less the lead): no call fell behind
    print(f"{CALLS} calls: reply send spans {min(lateness):.3f}..{max(lateness):.3f} s for 0.9 s of audio")
    assert max(lateness) < 1.2
