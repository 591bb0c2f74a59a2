"""Carrier media-stream wires without sockets: every message shape the carriers send, the exact
messages we send back, tolerance for what carriers may add, and a clear error for anything malformed."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import numpy as np
import pytest

from pipeline import g711
from transports.telephony import wire
from transports.telephony.events import (
    CarrierError,
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Started,
    Stopped,
)
from transports.telephony.telnyx_wire import TelnyxWire
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


def big_endian(pcm: bytes) -> bytes:
    return np.frombuffer(pcm, "<i2").astype(">i2").tobytes()


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


# --- Telnyx: messages in -------------------------------------------------------------------------

TELNYX_STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
TELNYX_CALL = "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
TELNYX_CONNECTED = {"event": "connected", "version": "1.0.0"}


def telnyx_start(encoding: Any = "PCMU", rate: Any = 8000, **extra: Any) -> dict[str, Any]:
    start = {
        "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
        "call_control_id": TELNYX_CALL,
        "call_session_id": "ff55a038-4f6d-11ef-9ac2-02420aef0d1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "tags": ["TAG1"],
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "media_format": {"encoding": encoding, "sample_rate": rate, "channels": 1},
        **extra,
    }
    return {"event": "start", "sequence_number": "1", "stream_id": TELNYX_STREAM, "start": start}


def telnyx_media(sequence: int, chunk: int, payload: bytes = ULAW_20MS) -> dict[str, Any]:
    media = {"track": "inbound", "chunk": str(chunk), "timestamp": str(20 * chunk), "payload": b64(payload)}
    return {"event": "media", "sequence_number": str(sequence), "stream_id": TELNYX_STREAM, "media": media}


def telnyx_event(event: str, sequence: int, **body: Any) -> dict[str, Any]:
    return {"event": event, "stream_id": TELNYX_STREAM, "sequence_number": str(sequence), **body}


def started_telnyx(**options: Any) -> TelnyxWire:
    telnyx = TelnyxWire(**options)
    assert isinstance(telnyx.parse(dumps(telnyx_start())), Started)
    return telnyx


def test_a_whole_telnyx_call_parses_into_events() -> None:
    telnyx = TelnyxWire()
    dtmf = telnyx_event("dtmf", 3, occurred_at="2025-06-05T08:54:19.698408Z", dtmf={"digit": "#"})
    stop = telnyx_event("stop", 6, stop={"user_id": "u", "call_control_id": TELNYX_CALL})
    events = [
        telnyx.parse(dumps(m))
        for m in (
            TELNYX_CONNECTED,
            telnyx_start(custom_parameters={"token": "t0k3n"}),
            telnyx_media(2, 1),
            dtmf,
            telnyx_media(4, 2),
            telnyx_event("mark", 5, mark={"name": "some_mark_name"}),
            stop,
        )
    ]
    pcm = g711.ulaw_decode(ULAW_20MS)
    assert events == [
        Connected("1.0.0"),
        Started(
            stream_id=TELNYX_STREAM,
            call_id=TELNYX_CALL,
            account_id="3E6F995F-85F7-4705-9741-53B116D28237",
            caller="+13122010094",
            called="+13122123456",
            custom_parameters={"token": "t0k3n"},
            encoding="PCMU",
            sample_rate=8000,
        ),
        Media(pcm, timestamp_ms=20, chunk=1),
        Dtmf("#"),
        Media(pcm, timestamp_ms=40, chunk=2),
        Mark("some_mark_name"),
        Stopped(),
    ]


@pytest.mark.parametrize(
    ("encoding", "rate", "coded", "pcm"),
    [
        ("PCMU", 8000, g711.ulaw_encode(tone()), g711.ulaw_decode(g711.ulaw_encode(tone()))),
        ("PCMA", 8000, g711.alaw_encode(tone()), g711.alaw_decode(g711.alaw_encode(tone()))),
        ("pcma", "8000", g711.alaw_encode(tone()), g711.alaw_decode(g711.alaw_encode(tone()))),
        ("L16", 8000, big_endian(tone()), tone()),
        ("L16", 16000, big_endian(tone(320, 16000)), tone(320, 16000)),
        ("L16", "24000", big_endian(tone(480, 24000)), tone(480, 24000)),
    ],
)
def test_telnyx_decodes_each_codec_it_takes(encoding: str, rate: Any, coded: bytes, pcm: bytes) -> None:
    telnyx = TelnyxWire()
    started = telnyx.parse(dumps(telnyx_start(encoding, rate)))
    assert isinstance(started, Started)
    assert (started.encoding, started.sample_rate) == (encoding.upper(), int(rate))
    assert telnyx.parse(dumps(telnyx_media(2, 1, coded))) == Media(pcm, timestamp_ms=20, chunk=1)


def test_telnyx_l16_byte_order_is_a_choice() -> None:
    telnyx = TelnyxWire(l16_byteorder="little", send_codec="L16", send_rate=16000)
    assert isinstance(telnyx.parse(dumps(telnyx_start("L16", 16000))), Started)
    assert telnyx.parse(dumps(telnyx_media(2, 1, tone(320, 16000)))) == Media(tone(320, 16000), 20, 1)
    sent = json.loads(telnyx.media(tone(320, 16000)))
    assert base64.b64decode(sent["media"]["payload"]) == tone(320, 16000)
    big = TelnyxWire(send_codec="L16", send_rate=16000)
    sent = json.loads(big.media(tone(320, 16000)))
    assert base64.b64decode(sent["media"]["payload"]) == big_endian(tone(320, 16000))


def test_telnyx_start_tolerates_missing_optional_fields() -> None:
    minimal = {"event": "start", "stream_id": TELNYX_STREAM, "start": {"call_control_id": TELNYX_CALL}}
    assert TelnyxWire().parse(dumps(minimal)) == Started(stream_id=TELNYX_STREAM, call_id=TELNYX_CALL)
    inner = {"event": "start", "start": {"call_control_id": TELNYX_CALL, "stream_id": TELNYX_STREAM}}
    assert TelnyxWire().parse(dumps(inner)) == Started(stream_id=TELNYX_STREAM, call_id=TELNYX_CALL)


@pytest.mark.parametrize(
    ("encoding", "rate", "reason"),
    [
        ("OPUS", 8000, "codec 'OPUS': use PCMU, PCMA or L16"),
        ("G722", 16000, "codec 'G722'"),
        ("AMR-WB", 16000, "codec 'AMR-WB'"),
        (None, 8000, "codec None"),
        ("PCMU", 16000, "PCMU at 16000 Hz: PCMU runs at 8000 Hz"),
        ("L16", 44100, "L16 at 44100 Hz"),
        ("L16", "fast", '"sample_rate" must be a count'),
    ],
)
def test_telnyx_refuses_codecs_it_cannot_decode(encoding: Any, rate: Any, reason: str) -> None:
    telnyx = TelnyxWire()
    result = telnyx.parse(dumps(telnyx_start(encoding, rate)))
    assert isinstance(result, ProtocolError) and reason in result.message, result
    assert telnyx.started is None


def test_telnyx_refuses_stereo_and_a_start_without_ids() -> None:
    stereo = telnyx_start()
    stereo["start"]["media_format"]["channels"] = 2
    result = TelnyxWire().parse(dumps(stereo))
    assert isinstance(result, ProtocolError) and "2 channels; only mono" in result.message
    no_call = telnyx_start()
    del no_call["start"]["call_control_id"]
    result = TelnyxWire().parse(dumps(no_call))
    assert isinstance(result, ProtocolError) and "needs a stream_id and a call_control_id" in result.message


def test_telnyx_errors_become_carrier_errors_even_before_start() -> None:
    error = {"code": 100003, "title": "malformed_frame", "detail": "The frame is malformed."}
    message = {"event": "error", "payload": error, "stream_id": TELNYX_STREAM}
    expected = CarrierError(100003, "malformed_frame", "The frame is malformed.")
    assert TelnyxWire().parse(dumps(message)) == expected
    assert started_telnyx().parse(dumps(message)) == expected
    odd = {"event": "error", "payload": {"code": "100004", "title": "invalid_media"}}
    assert TelnyxWire().parse(dumps(odd)) == CarrierError(100004, "invalid_media")
    assert TelnyxWire().parse(dumps({"event": "error"})) == CarrierError(None, "")


def test_telnyx_out_of_order_messages_are_taken_and_counted() -> None:
    telnyx = started_telnyx()
    chunks = []
    for sequence, chunk in ((2, 1), (4, 3), (3, 2), (5, 4)):
        event = telnyx.parse(dumps(telnyx_media(sequence, chunk)))
        assert isinstance(event, Media)
        chunks.append(event.chunk)
    assert chunks == [1, 3, 2, 4]
    assert (telnyx.sequence.last, telnyx.sequence.gaps, telnyx.sequence.out_of_order) == (5, 1, 1)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (telnyx_media(2, 1) | {"stream_id": "another"}, "not this one"),
        (telnyx_event("dtmf", 2, dtmf={"digit": "1"}) | {"stream_id": 7}, "not this one"),
        (telnyx_event("media", 2, media={"payload": "@@=="}), "not valid base64"),
        (telnyx_event("media", 2, media={"payload": "AAAA", "track": "outbound"}), "only the caller's"),
        (telnyx_event("dtmf", 2, dtmf={"digit": "**"}), 'needs a "digit"'),
        (telnyx_event("mark", 2, mark={"name": None}), 'non-empty "name"'),
        (telnyx_event("media", -1, media={"payload": "AAAA"}) | {"sequence_number": "-1"}, "sequence_number"),
        (telnyx_event("clear", 2), "unknown telnyx event 'clear'"),
        (telnyx_event("streamSid", 2), "unknown telnyx event"),
        (telnyx_start(), "second telnyx start"),
    ],
)
def test_malformed_telnyx_messages_are_errors(message: dict[str, Any], reason: str) -> None:
    telnyx = started_telnyx()
    result = telnyx.parse(dumps(message))
    assert isinstance(result, ProtocolError) and reason in result.message, result
    assert isinstance(telnyx.parse(dumps(telnyx_media(9, 8))), Media)


def test_telnyx_l16_payload_must_be_whole_samples() -> None:
    telnyx = TelnyxWire()
    assert isinstance(telnyx.parse(dumps(telnyx_start("L16", 8000))), Started)
    result = telnyx.parse(dumps(telnyx_media(2, 1, bytes(3))))
    assert isinstance(result, ProtocolError) and "not whole 16-bit samples" in result.message


def test_telnyx_before_start_after_stop_and_binary() -> None:
    telnyx = TelnyxWire()
    result = telnyx.parse(dumps(telnyx_media(2, 1)))
    assert isinstance(result, ProtocolError) and "telnyx media before start" in result.message
    telnyx = started_telnyx()
    assert telnyx.parse(dumps(telnyx_event("stop", 2))) == Stopped()
    result = telnyx.parse(dumps(telnyx_media(3, 2)))
    assert isinstance(result, ProtocolError) and "after stop" in result.message
    result = telnyx.parse_binary(bytes(10))
    assert isinstance(result, ProtocolError) and "telnyx sends JSON text" in result.message


# --- Telnyx: messages out ------------------------------------------------------------------------


def test_telnyx_outbound_messages_have_exactly_the_documented_keys() -> None:
    telnyx = started_telnyx()
    media = json.loads(telnyx.media(tone()))
    assert media == {"event": "media", "media": {"payload": b64(g711.ulaw_encode(tone()))}}
    assert json.loads(telnyx.mark("reply-3")) == {"event": "mark", "mark": {"name": "reply-3"}}
    assert json.loads(telnyx.clear()) == {"event": "clear"}


def test_telnyx_sends_its_bidirectional_codec_not_the_one_it_receives() -> None:
    telnyx = TelnyxWire(send_codec="PCMA")
    assert isinstance(telnyx.parse(dumps(telnyx_start("L16", 16000))), Started)
    assert telnyx.send_rate == 8000
    sent = json.loads(telnyx.media(tone()))
    assert base64.b64decode(sent["media"]["payload"]) == g711.alaw_encode(tone())


@pytest.mark.parametrize(
    ("codec", "rate", "reason"),
    [("OPUS", 8000, "codec 'OPUS'"), ("PCMU", 16000, "PCMU at 16000 Hz"), ("L16", 11025, "L16 at 11025 Hz")],
)
def test_telnyx_send_codec_must_be_one_it_can_encode(codec: str, rate: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        TelnyxWire(send_codec=codec, send_rate=rate)


def test_telnyx_outbound_needs_whole_samples() -> None:
    telnyx = TelnyxWire()
    with pytest.raises(ValueError, match="whole 16-bit samples"):
        telnyx.media(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="non-empty name"):
        telnyx.mark("")


def test_both_wires_are_carrier_wires() -> None:
    wires: list[wire.CarrierWire] = [TwilioWire(), TelnyxWire()]
    assert [w.carrier for w in wires] == ["twilio", "telnyx"]
    assert all(w.send_rate == 8000 and w.started is None for w in wires)


# --- fuzz ----------------------------------------------------------------------------------------

FUZZ_SEED = 20261203
FUZZ_COUNT = 4000  # per carrier and kind of fuzz
ODD_VALUES: tuple[Any, ...] = (
    None,
    0,
    -1,
    1.5,
    True,
    "",
    " ",
    "x" * 60,
    [],
    {},
    [1],
    {"a": 1},
    "\u0000",
    "-3",
)


def _mutated(rng: random.Random, message: dict[str, Any]) -> str:
    """A valid message made wrong in one way (or, by chance, still valid)."""
    message = json.loads(json.dumps(message))
    body_key = next((k for k in message if isinstance(message[k], dict)), None)
    choice = rng.randrange(8)
    if choice == 0 and body_key:  # a field of the body becomes something else, or goes
        body = message[body_key]
        key = rng.choice([*body, "payload", "digit", "name"])
        if rng.random() < 0.3:
            body.pop(key, None)
        else:
            body[key] = rng.choice(ODD_VALUES)
    elif choice == 1:  # a top-level field becomes something else
        message[rng.choice([*message])] = rng.choice(ODD_VALUES)
    elif choice == 2 and body_key:  # the body is not an object
        message[body_key] = rng.choice(ODD_VALUES[:10])
    elif choice == 3 and body_key == "media":  # base64 that is not
        message["media"]["payload"] = rng.choice(
            ["!!!!", "QUJD*", "a" * 5, "=AAA", "AA=A", "\u00e9\u00e9==", " AAAA"]
        )
    elif choice == 4:  # the JSON text cut short
        text = json.dumps(message)
        return text[: rng.randrange(1, len(text))]
    elif choice == 5:  # deep nesting inside a valid message
        depth = rng.choice([10, 1000, 5000])
        message["extra"] = json.loads("[" * min(depth, 500) + "]" * min(depth, 500))
        if depth > 500:
            return json.dumps(message)[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
    elif choice == 6:  # random printable noise
        return "".join(rng.choice('{}[]":,0123456789 abcdeventmdia') for _ in range(rng.randrange(1, 120)))
    else:  # an event name that is not one
        message["event"] = rng.choice(
            ["Media", "MEDIA", "clear", "playAudio", "", "start ", "medi", "x" * 80]
        )
    return json.dumps(message)


def _noisy(rng: random.Random, message: dict[str, Any]) -> str:
    """A valid message with fields a carrier may add, and its counters as numbers or strings."""
    message = json.loads(json.dumps(message))
    for obj in [message, *(v for v in message.values() if isinstance(v, dict))]:
        for key in list(obj):
            if key in ("sequenceNumber", "sequence_number", "chunk", "timestamp") and rng.random() < 0.5:
                obj[key] = int(obj[key])
        if rng.random() < 0.5:
            obj[f"added_{rng.randrange(100)}"] = rng.choice(ODD_VALUES)
    return json.dumps(message)


CARRIERS = {
    "twilio": (
        TwilioWire,
        TWILIO_START,
        [twilio_media(2, 1), twilio_dtmf(3), twilio_mark(4), twilio_stop(5)],
    ),
    "telnyx": (
        TelnyxWire,
        telnyx_start(),
        [
            telnyx_media(2, 1),
            telnyx_event("dtmf", 3, dtmf={"digit": "5"}),
            telnyx_event("mark", 4, mark={"name": "m"}),
            telnyx_event("stop", 5),
        ],
    ),
}


@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_fuzzed_messages_are_events_or_short_errors_and_the_stream_goes_on(carrier: str) -> None:
    make, start, messages = CARRIERS[carrier]
    rng = random.Random(FUZZ_SEED)
    reasons: set[str] = set()
    stream = make()
    assert isinstance(stream.parse(dumps(start)), Started)
    for _ in range(FUZZ_COUNT):
        template = rng.choice(messages[:3])  # not stop: the stream must stay open
        result = stream.parse(_mutated(rng, template))
        if isinstance(result, ProtocolError):
            assert 0 < len(result.message) <= 300, result.message
            reasons.add(result.message[:24])
        else:
            assert isinstance(result, Media | Dtmf | Mark | Connected | CarrierError), result
        assert isinstance(stream.parse(dumps(messages[0])), Media)  # still taking the caller's audio
    assert len(reasons) >= 12, reasons  # the mutations reach many different refusals
    fresh = make()  # and before start: a fuzzed start is either a start or an error
    for _ in range(FUZZ_COUNT // 4):
        result = fresh.parse(_mutated(rng, start))
        assert isinstance(result, ProtocolError | Started | Connected | Stopped | CarrierError), result
        fresh = make() if isinstance(result, Started | Stopped) else fresh


@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_valid_messages_with_added_fields_parse_the_same(carrier: str) -> None:
    make, start, messages = CARRIERS[carrier]
    rng = random.Random(FUZZ_SEED + 1)
    plain = make()
    expected = [plain.parse(dumps(start))] + [plain.parse(dumps(m)) for m in messages]
    for _ in range(FUZZ_COUNT // 8):
        stream = make()
        got = [stream.parse(_noisy(rng, start))] + [stream.parse(_noisy(rng, m)) for m in messages]
        assert got == expected
