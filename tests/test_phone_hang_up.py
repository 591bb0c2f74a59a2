"""A call ends mid-reply, from either side, with real speech on a fake Twilio on 127.0.0.1.

The caller hangs up (``stop``) while the bot is talking: the graph must end cleanly, the recording be
complete (transcript with the call's metadata, 8 kHz WAVs whose headers match their data), no task or
socket be left, and no REST hang-up be attempted, since the carrier already ended the call. When the
graph ends the call (``max_call_seconds``) the reply in flight plays out, then the call IS hung up,
through the fake REST API.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.fakes.carrier import ACCOUNT_SID, RATE, FakeTwilio
from tests.test_phone_barge_in import (
    STORY,
    _no_requests,  # noqa: F401  (autouse: the storyteller's requests)
    clip,
    played_seconds_since_mark,
    read_track,
    serving,
)
from tests.test_phone_twilio import (
    _fresh,  # noqa: F401  (autouse: the auth token)
    ended,
    transcripts,
)
from transports.telephony.call import PhoneCall
from transports.websocket.server import VoiceServer

CALL_LIMIT = 7.0
"""``max_call_seconds`` when the graph ends the call: the story (~12 s) starts about 4 s in."""


async def settled(server: VoiceServer, baseline: set[asyncio.Task[object]], timeout: float = 10.0) -> None:
    """Wait until every task the call started is done and no connection is open."""
    deadline = time.monotonic() + timeout
    while True:
        left = {t for t in asyncio.all_tasks() - baseline if t is not asyncio.current_task() and not t.done()}
        if not left and server.connections.open == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"left behind: {sorted(t.get_name() for t in left)}, {server.connections.open} connection(s)"
            )
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("who", ["caller", "graph"])
async def test_a_call_ended_mid_reply_ends_cleanly_and_is_hung_up_only_by_the_graph(
    tmp_path: Path, who: str
) -> None:
    mic = f", max_call_seconds: {CALL_LIMIT}" if who == "graph" else ""
    async with serving(tmp_path, mic=mic) as (server, rest):
        baseline = set(asyncio.all_tasks())
        carrier = FakeTwilio(server.url)
        await carrier.call()
        await carrier.until(lambda: bool(server.sessions), "the call")
        [call] = server.sessions.values()
        assert isinstance(call, PhoneCall)
        await carrier.silence(0.3)
        await carrier.speak(clip("0880"))
        await carrier.silence_until(
            lambda: played_seconds_since_mark(carrier, 0) > 1.0, "the reply playing", 40
        )
        if who == "caller":
            await carrier.stop()
        else:
            await carrier.silence_until(carrier.closed.is_set, "the server ending the call", 20)
            into = time.monotonic() - carrier.media_sent[0]
            print(f"the server closed the stream {into:.1f} s into the call")
            await asyncio.wait_for(rest.hung_up.wait(), 10)
            await carrier.close()
        await ended(server)
        await settled(server, baseline)
    assert carrier.violations == []
    assert call.graph.failed is None
    assert call.carrier_stopped is (who == "caller")
    if who == "caller":
        assert rest.requests == []  # the carrier ended it: nothing to hang up
    else:
        [request] = rest.requests
        assert request == {
            "account": ACCOUNT_SID,
            "call": carrier.call_sid,
            "form": {"Status": "completed"},
            "auth_ok": True,
        }
    sample = server.metrics.registry.get_sample_value
    assert sample("voxgraph_sessions_active") == 0

    [transcript] = transcripts(tmp_path)
    assert transcript["metadata"]["caller"] == carrier.caller
    assert transcript["metadata"]["call_id"] == carrier.call_sid
    messages = transcript["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert "young man" in messages[0]["content"].lower()
    heard = STORY[: len(carrier.played.marks)]  # the sentences whose marks the carrier played
    assert messages[1]["content"].split() == " ".join(heard).split()
    if who == "caller":  # cut as a barge-in would be: what was generated but not heard is not kept
        assert len(heard) < len(STORY) and messages[1].get("type") == "interrupted"
    else:  # the call's time ran out: the reply in flight was played out before the hang-up
        assert heard == STORY and "type" not in messages[1]

    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    caller_seconds = len(carrier.media_sent) * 0.020
    for name in ("user.wav", "bot.wav", "mixed.wav"):
        pcm, rate = read_track(folder / name)
        assert rate == RATE, name
        assert pcm, name
    user, _ = read_track(folder / "user.wav")
    taken = caller_seconds if who == "caller" else CALL_LIMIT  # the graph stops listening at its limit
    assert len(user) / 2 / RATE == pytest.approx(taken, abs=0.3)  # the call's input, all of it
