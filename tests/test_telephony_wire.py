"""Carrier media-stream wires without sockets: every message shape the carriers send, the exact
messages we send back, tolerance for what carriers may add, and a clear error for anything malformed."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from pipeline import g711
from transports.telephony import wire
from transports.telephony.events import (
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Started,
    Stopped,
)
from transports.telephony.twilio_wire import TwilioWire

STREAM = "MZ" + "1" * 32
CALL = "CA" + "b" * 32
ACCOUNT = "AC" + "a" * 32
IDS = {"streamSid": STREAM, "callSid": CALL}
ULAW_20MS = bytes(range(96, 256))  # 160 μ-law codes: one 20 ms frame at 8 kHz


def tone(samples: int = 160, rate: int = 8000) -> bytes:
    """A 440 Hz tone, s16le."""
    t = np.arange(samples) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message)


# --- Twilio: messages in -------------------------------------------------------------------------

TWILIO_CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
TWILIO_START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"caller": "+15551230000", "token": "t0k3n"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
    "streamSid": STREAM,
}


def twilio_media(sequence: int, chunk: int, payload: bytes = ULAW_20MS, **extra: Any) -> dict[str, Any]:
    media = {"track": "inbound", "chunk": str(chunk), "timestamp": str(20 * chunk), "payload": b64(payload)}
    return {"event": "media", "sequenceNumber": str(sequence), "media": media, "streamSid": STREAM, **extra}


def twilio_dtmf(sequence: int, digit: Any = "1") -> dict[str, Any]:
    dtmf = {"track": "inbound_track", "digit": digit}
    return {"event": "dtmf", "streamSid": STREAM, "sequenceNumber": str(sequence), "dtmf": dtmf}


def twilio_mark(sequence: int, name: Any = "reply-3") -> dict[str, Any]:
    return {"event": "mark", "sequenceNumber": str(sequence), "streamSid": STREAM, "mark": {"name": name}}


def twilio_stop(sequence: int) -> dict[str, Any]:
    stop = {"accountSid": ACCOUNT, "callSid": CALL}
    return {"event": "stop", "sequenceNumber": str(sequence), "stop": stop, "streamSid": STREAM}


def started_twilio() -> TwilioWire:
    twilio = TwilioWire()
    assert twilio.parse(dumps(TWILIO_CONNECTED)) == Connected("1.0.0")
    assert isinstance(twilio.parse(dumps(TWILIO_START)), Started)
    return twilio


def test_a_whole_twilio_call_parses_into_events() -> None:
    twilio = TwilioWire()
    events = [
        twilio.parse(dumps(m))
        for m in (
            TWILIO_CONNECTED,
            TWILIO_START,
            twilio_media(2, 1),
            twilio_dtmf(3, "#"),
            twilio_media(4, 2),
            twilio_mark(5),
            twilio_stop(6),
        )
    ]
    pcm = g711.ulaw_decode(ULAW_20MS)
    assert events == [
        Connected("1.0.0"),
        Started(
            stream_id=STREAM,
            call_id=CALL,
            account_id=ACCOUNT,
            caller="+15551230000",
            custom_parameters={"caller": "+15551230000", "token": "t0k3n"},
            encoding="PCMU",
            sample_rate=8000,
        ),
        Media(pcm, timestamp_ms=20, chunk=1),
        Dtmf("#"),
        Media(pcm, timestamp_ms=40, chunk=2),
        Mark("reply-3"),
        Stopped(),
    ]
    assert len(pcm) == 320  # 160 samples of s16le
    assert twilio.started is not None and twilio.started.stream_id == STREAM
    assert (twilio.sequence.last, twilio.sequence.gaps, twilio.sequence.out_of_order) == (6, 0, 0)


def test_twilio_tolerates_what_it_may_add_and_numbers_for_strings() -> None:
    twilio = TwilioWire()
    start = json.loads(dumps(TWILIO_START))
    start["sequenceNumber"] = 1  # a number instead of a string
    start["start"]["newField"] = {"x": [1, 2]}
    start["start"]["mediaFormat"]["sampleRate"] = "8000"
    start["start"]["customParameters"]["count"] = 3  # not a string: dropped, not an error
    start["extra"] = True
    started = twilio.parse(dumps(start))
    assert isinstance(started, Started)
    assert started.custom_parameters == {"caller": "+15551230000", "token": "t0k3n"}
    media = twilio_media(2, 1, future="field")
    media["media"]["chunk"] = 1
    del media["media"]["track"], media["media"]["timestamp"]
    assert twilio.parse(dumps(media)) == Media(g711.ulaw_decode(ULAW_20MS), timestamp_ms=None, chunk=1)
    assert twilio.parse(dumps(twilio_dtmf(3, "a"))) == Dtmf("A")
    assert twilio.parse(dumps({"event": "stop"})) == Stopped()  # no stream id, no sequence: still the end


def test_twilio_start_without_media_format_or_parameters_is_mulaw_8k() -> None:
    twilio = TwilioWire()
    minimal = {"event": "start", "start": {"streamSid": STREAM, "callSid": CALL}}
    assert twilio.parse(dumps(minimal)) == Started(stream_id=STREAM, call_id=CALL)
    outer_only = {"event": "start", "streamSid": STREAM, "start": {"callSid": CALL}}
    assert TwilioWire().parse(dumps(outer_only)) == Started(stream_id=STREAM, call_id=CALL)


def test_twilio_payload_of_any_length_decodes() -> None:
    twilio = started_twilio()
    for size in (1, 7, 160, 800, 8000):
        event = twilio.parse(dumps(twilio_media(2, 1, bytes([0xFF]) * size)))
        assert event == Media(bytes(2 * size), timestamp_ms=20, chunk=1)  # μ-law silence is 0


def test_twilio_sequence_gaps_and_reorders_are_counted_not_refused() -> None:
    twilio = started_twilio()
    for sequence in (2, 3, 5, 4, 6):
        assert isinstance(twilio.parse(dumps(twilio_media(sequence, sequence - 1))), Media)
    assert (twilio.sequence.last, twilio.sequence.gaps, twilio.sequence.out_of_order) == (6, 1, 1)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (twilio_media(2, 1, stream="x") | {"streamSid": "MZ" + "9" * 32}, "not this one"),
        (twilio_dtmf(2) | {"streamSid": "MZother"}, "not this one"),
        (twilio_mark(2) | {"streamSid": None}, "not this one"),
        ({"event": "media", "media": {"payload": "!!!!"}}, "not valid base64"),
        ({"event": "media", "media": {"payload": "QUJD*"}}, "not valid base64"),
        ({"event": "media", "media": {"payload": "QUJDRA"}}, "not valid base64"),  # unpadded
        ({"event": "media", "media": {"payload": ""}}, "non-empty"),
        ({"event": "media", "media": {"payload": 12}}, "non-empty"),
        ({"event": "media", "media": {}}, "non-empty"),
        ({"event": "media", "media": "AAAA"}, '"media" must be an object'),
        ({"event": "media", "media": {"payload": "AAAA", "track": "outbound"}}, "only the caller's"),
        ({"event": "media", "media": {"payload": "AAAA", "chunk": "two"}}, '"chunk" must be a count'),
        ({"event": "media", "media": {"payload": "AAAA", "timestamp": -5}}, '"timestamp" must be a count'),
        ({"event": "media", "sequenceNumber": "1.5", "media": {"payload": "AAAA"}}, '"sequenceNumber"'),
        ({"event": "media", "sequenceNumber": True, "media": {"payload": "AAAA"}}, '"sequenceNumber"'),
        ({"event": "dtmf", "dtmf": {"digit": "12"}}, 'needs a "digit"'),
        ({"event": "dtmf", "dtmf": {"digit": "x"}}, 'needs a "digit"'),
        ({"event": "dtmf", "dtmf": {"digit": 1}}, 'needs a "digit"'),
        ({"event": "dtmf", "dtmf": {}}, 'needs a "digit"'),
        ({"event": "dtmf", "dtmf": {"digit": "1", "track": "outbound_track"}}, "only the caller's"),
        ({"event": "mark", "mark": {"name": ""}}, 'non-empty "name"'),
        ({"event": "mark", "mark": {}}, 'non-empty "name"'),
        ({"event": "mark"}, 'non-empty "name"'),
        ({"event": "start", "start": {"streamSid": STREAM, "callSid": CALL}}, "second twilio start"),
        ({"event": "clear", "streamSid": STREAM}, "unknown twilio event 'clear'"),
        ({"event": "Media"}, "unknown twilio event 'Media'"),
        ({"event": 5}, 'without an "event"'),
        ({"type": "media"}, 'without an "event"'),
    ],
)
def test_malformed_twilio_messages_in_a_stream_are_errors(message: dict[str, Any], reason: str) -> None:
    twilio = started_twilio()
    result = twilio.parse(dumps(message))
    assert isinstance(result, ProtocolError) and reason in result.message, result
    assert isinstance(twilio.parse(dumps(twilio_media(9, 8))), Media)  # the stream goes on


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        ({"streamSid": STREAM}, "needs a streamSid and a callSid"),
        ({"callSid": CALL}, "needs a streamSid and a callSid"),
        ({"streamSid": 1, "callSid": CALL}, '"streamSid" must be a string'),
        (IDS | {"mediaFormat": {"encoding": "audio/x-l16"}}, "only audio/x-mulaw"),
        (IDS | {"mediaFormat": {"sampleRate": 16000}}, "only audio/x-mulaw"),
        (IDS | {"mediaFormat": {"channels": 2}}, "only audio/x-mulaw"),
        (IDS | {"mediaFormat": "mulaw"}, "mediaFormat must be an object"),
        (IDS | {"customParameters": ["a"]}, "custom parameters"),
    ],
)
def test_malformed_twilio_starts_are_errors(start: dict[str, Any], reason: str) -> None:
    twilio = TwilioWire()
    result = twilio.parse(dumps({"event": "start", "sequenceNumber": "1", "start": start}))
    assert isinstance(result, ProtocolError) and reason in result.message, result
    assert twilio.started is None


def test_twilio_start_with_two_stream_ids_is_an_error() -> None:
    message = json.loads(dumps(TWILIO_START))
    message["streamSid"] = "MZ" + "2" * 32
    result = TwilioWire().parse(dumps(message))
    assert isinstance(result, ProtocolError) and "two different streamSids" in result.message


def test_twilio_stream_events_before_start_are_errors_but_stop_ends_it() -> None:
    twilio = TwilioWire()
    for message in (twilio_media(2, 1), twilio_dtmf(2), twilio_mark(2)):
        result = twilio.parse(dumps(message))
        assert isinstance(result, ProtocolError) and "before start" in result.message
    assert twilio.parse(dumps(twilio_stop(2))) == Stopped()


def test_nothing_is_taken_after_twilio_stop() -> None:
    twilio = started_twilio()
    assert twilio.parse(dumps(twilio_stop(2))) == Stopped()
    for message in (twilio_media(3, 2), twilio_stop(4), TWILIO_START):
        result = twilio.parse(dumps(message))
        assert isinstance(result, ProtocolError) and "after stop" in result.message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not JSON"),
        ("media", "not JSON"),
        ("{'event': 'media'}", "not JSON"),
        ('{"event": "media",}', "not JSON"),
        ("[1, 2]", "got a JSON list"),
        ('"connected"', "got a JSON str"),
        ("null", "got a JSON NoneType"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_twilio_text_that_is_not_a_message_is_an_error(text: str, reason: str) -> None:
    result = TwilioWire(max_bytes=1 << 20).parse(text)
    assert isinstance(result, ProtocolError) and reason in result.message, result


def test_huge_and_binary_messages_are_refused_before_parsing() -> None:
    twilio = started_twilio()
    huge = dumps(twilio_media(2, 1, bytes(wire.MAX_MESSAGE_BYTES)))
    result = twilio.parse(huge)
    assert isinstance(result, ProtocolError) and "over the limit of 65536" in result.message
    wide = '{"event":"mark","mark":{"name":"' + "\u00e9" * 40_000 + '"}}'  # 80 KB of UTF-8 in 40 K chars
    result = twilio.parse(wide)
    assert isinstance(result, ProtocolError) and "over the limit" in result.message
    small = TwilioWire(max_bytes=100)
    result = small.parse(dumps(TWILIO_START))
    assert isinstance(result, ProtocolError) and "over the limit of 100" in result.message
    result = twilio.parse_binary(b"\x00" * 160)
    assert isinstance(result, ProtocolError) and "binary frame of 160 bytes" in result.message


# --- Twilio: messages out ------------------------------------------------------------------------


def test_twilio_outbound_messages_have_exactly_the_documented_keys() -> None:
    twilio = started_twilio()
    pcm = tone()
    media = json.loads(twilio.media(pcm))
    assert list(media) == ["event", "streamSid", "media"] and list(media["media"]) == ["payload"]
    assert media["event"] == "media" and media["streamSid"] == STREAM
    ulaw = base64.b64decode(media["media"]["payload"], validate=True)
    assert ulaw == g711.ulaw_encode(pcm) and len(ulaw) == 160
    assert len(media["media"]["payload"]) == 216
    mark = {"event": "mark", "streamSid": STREAM, "mark": {"name": "reply-3"}}
    assert json.loads(twilio.mark("reply-3")) == mark
    assert json.loads(twilio.clear()) == {"event": "clear", "streamSid": STREAM}


def test_twilio_outbound_audio_round_trips_through_the_parser() -> None:
    twilio = started_twilio()
    pcm = tone(800)
    sent = json.loads(twilio.media(pcm))
    echoed = twilio_media(2, 1, base64.b64decode(sent["media"]["payload"]))
    event = twilio.parse(dumps(echoed))
    assert isinstance(event, Media)
    heard = np.frombuffer(event.pcm, "<i2").astype(float)
    original = np.frombuffer(pcm, "<i2").astype(float)
    snr = 10 * np.log10(np.sum(original**2) / np.sum((original - heard) ** 2))
    assert snr > 30  # μ-law quantisation only


def test_twilio_outbound_needs_a_started_stream_and_whole_samples() -> None:
    twilio = TwilioWire()
    with pytest.raises(wire.StreamNotStarted, match="after its start"):
        twilio.media(bytes(320))
    with pytest.raises(wire.StreamNotStarted):
        twilio.mark("m")
    with pytest.raises(wire.StreamNotStarted):
        twilio.clear()
    twilio = started_twilio()
    for bad in (b"", b"\x00"):
        with pytest.raises(ValueError, match="whole 16-bit samples"):
            twilio.media(bad)
    with pytest.raises(ValueError, match="non-empty name"):
        twilio.mark("")
