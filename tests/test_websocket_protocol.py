"""The /ws wire protocol without sockets: parsing, validation, encoding, hold-to-talk and re-chunking."""

from __future__ import annotations

import json

import pytest

from transports.websocket import protocol
from transports.websocket.protocol import (
    Audio,
    MicGate,
    ProtocolError,
    PushToTalk,
    Rechunker,
    Start,
    Stop,
    UserText,
    parse_binary,
    parse_text,
)

LIMIT = 4096


@pytest.mark.parametrize(
    ("text", "event"),
    [
        ('{"type": "start"}', Start()),
        ('{"type": "stop"}', Stop()),
        ('{"type": "ptt", "pressed": true}', PushToTalk(True)),
        ('{"type": "ptt", "pressed": false}', PushToTalk(False)),
        ('{"type": "text", "text": "  what time is it?  "}', UserText("what time is it?")),
        ('{"type": "start", "client": "v2", "extra": [1]}', Start()),  # unknown fields are ignored
    ],
)
def test_valid_text_messages_become_events(text: str, event: object) -> None:
    assert parse_text(text, LIMIT) == event


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "must be JSON"),
        ("", "must be JSON"),
        ("[1, 2]", "JSON object"),
        ('"start"', "JSON object"),
        ("{}", 'needs a "type"'),
        ('{"type": 3}', 'needs a "type"'),
        ('{"type": "dance"}', "unknown message type 'dance'; types are start, stop, ptt, text"),
        ('{"type": "ptt"}', '"pressed": true or false'),
        ('{"type": "ptt", "pressed": "yes"}', '"pressed": true or false'),
        ('{"type": "ptt", "pressed": 1}', '"pressed": true or false'),
        ('{"type": "text"}', 'non-empty "text"'),
        ('{"type": "text", "text": "   "}', 'non-empty "text"'),
        ('{"type": "text", "text": 42}', 'non-empty "text"'),
    ],
)
def test_malformed_text_messages_are_errors_that_say_what_is_wrong(text: str, says: str) -> None:
    result = parse_text(text, LIMIT)
    assert isinstance(result, ProtocolError)
    assert says in result.message


def test_text_over_the_size_limit_is_refused_before_parsing() -> None:
    big = json.dumps({"type": "text", "text": "é" * 3000})  # 6000+ bytes in UTF-8, 3000 characters
    result = parse_text(big, LIMIT)
    assert isinstance(result, ProtocolError)
    assert "over the limit of 4096" in result.message


def test_typed_text_longer_than_the_text_limit_is_refused() -> None:
    result = parse_text(json.dumps({"type": "text", "text": "a" * (protocol.MAX_TEXT_CHARS + 1)}), 10**6)
    assert isinstance(result, ProtocolError)
    assert "characters" in result.message


def test_binary_is_whole_samples_within_the_limit() -> None:
    assert parse_binary(b"\x01\x00" * 320, LIMIT) == Audio(b"\x01\x00" * 320)
    assert isinstance(parse_binary(b"\x01\x00\x02", LIMIT), ProtocolError)
    assert "odd 3 bytes" in parse_binary(b"\x01\x00\x02", LIMIT).message  # type: ignore[union-attr]
    assert isinstance(parse_binary(b"", LIMIT), ProtocolError)
    over = parse_binary(bytes(LIMIT + 2), LIMIT)
    assert isinstance(over, ProtocolError) and "over the limit" in over.message


def test_server_messages_are_json_with_the_type_first() -> None:
    assert json.loads(protocol.audio_format(22050)) == {
        "type": "audio_format",
        "sample_rate": 22050,
        "channels": 1,
    }
    assert json.loads(protocol.transcript("hi", final=False)) == {
        "type": "transcript",
        "text": "hi",
        "final": False,
    }
    assert json.loads(protocol.assistant_text("Hé", final=True))["text"] == "Hé"
    assert json.loads(protocol.status("speaking")) == {"type": "status", "state": "speaking"}
    assert json.loads(protocol.interrupted()) == {"type": "interrupted"}
    assert json.loads(protocol.metrics(812.345)) == {"type": "metrics", "voice_to_voice_ms": 812.3}
    assert json.loads(protocol.error("x")) == {"type": "error", "message": "x"}
    assert json.loads(protocol.session("abc")) == {"type": "session", "session_id": "abc"}
    assert protocol.status("x").startswith('{"type":"status"')


def test_mic_gate_is_open_hands_free_and_only_while_held_in_push_to_talk() -> None:
    gate = MicGate()
    speech = b"\x10\x00" * 4
    assert gate.apply(speech) == speech  # a plain client that only streams PCM is heard
    gate.feed(PushToTalk(False))
    assert gate.apply(speech) == bytes(8)  # same length: the stream's clock stays continuous
    gate.feed(PushToTalk(True))
    assert gate.apply(speech) == speech
    gate.feed(PushToTalk(False))
    assert not gate.open
    gate.feed(Start())
    assert gate.open and gate.apply(speech) == speech


def test_rechunker_cuts_whole_frames_and_pads_the_rest() -> None:
    chunker = Rechunker(4)
    assert chunker.feed(b"abc") == []
    assert chunker.feed(b"defghij") == [b"abcd", b"efgh"]
    assert chunker.feed(b"k") == []
    assert chunker.flush() == b"ijk\x00"
    assert chunker.flush() == b""
    with pytest.raises(ValueError):
        Rechunker(0)
