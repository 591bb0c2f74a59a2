"""The served OpenAI routes' pure parts: requests read as OpenAI reads them, responses shaped as it sends
them, uploads decoded and cut at pauses, the engines' waiting line, and the config's node references."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import struct
from typing import Any

import numpy as np
import pytest
import soundfile

from pipeline import config
from transports.dropin import openai_wire as wire
from transports.dropin.openai_audio import (
    COMPRESSED,
    AudioUploadError,
    CompressedAudio,
    decode_upload,
    pieces,
    streamed_wav_header,
)
from transports.dropin.openai_engines import Engine, EngineBusy, Lane

USER = {"role": "user", "content": "Hi"}


def refused(call: Any, *args: Any) -> wire.RequestError:
    with pytest.raises(wire.RequestError) as error:
        call(*args)
    return error.value


def test_chat_requests_are_read_as_openai_reads_them() -> None:
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
    }
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "developer", "content": "Be brief."}, parts],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 20,
        "temperature": 0,
    }
    chat = wire.parse_chat(body)
    assert chat.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    assert (chat.stream, chat.include_usage, chat.max_tokens, chat.temperature) == (True, True, 20, 0.0)
    assert wire.parse_chat({"model": "m", "messages": [USER], "max_tokens": 7}).max_tokens == 7


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
    ],
)
def test_chat_requests_openai_would_refuse_are_400s(change: dict[str, Any], param: str) -> None:
    error = refused(wire.parse_chat, {"model": "m", "messages": [USER], **change})
    assert (error.status, error.param) == (400, param)
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_chat_chunks_carry_usage_only_when_asked() -> None:
    plain = wire.chat_chunk("id", "m", 1, {"content": "Hi"})
    assert "usage" not in plain and plain["choices"][0]["delta"] == {"content": "Hi"}
    asked = wire.chat_chunk("id", "m", 1, {"content": "Hi"}, with_usage=True)
    assert asked["usage"] is None
    last = wire.chat_chunk("id", "m", 1, None, usage=wire.usage_of(5, 2), with_usage=True)
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
    }


def test_speech_requests_name_a_served_voice_and_format() -> None:
    voices = sorted(wire.OPENAI_VOICES)
    body: dict[str, Any] = {
        "model": "tts-1",
        "input": "Hello.",
        "voice": {"id": "nova"},
        "response_format": "wav",
    }
    assert wire.parse_speech(body, voices, 100).voice == "nova"
    changes: list[tuple[dict[str, Any], str]] = [
        ({"voice": "robot"}, "voice"),
        ({"response_format": "m4a"}, "response_format"),
        ({"input": "  "}, "input"),
        ({"input": "x" * 101}, "input"),
        ({"speed": 9}, "speed"),
    ]
    for change, param in changes:
        assert refused(wire.parse_speech, {**body, **change}, voices, 100).param == param
    without_format = {key: value for key, value in body.items() if key != "response_format"}
    assert wire.parse_speech(without_format, voices, 100).response_format == "mp3"  # OpenAI's default


def test_transcription_fields_are_checked_and_whisper_1_never_streams() -> None:
    fields = {"model": ["gpt-4o-transcribe"], "stream": ["true"], "language": ["en"], "prompt": ["Dashwood"]}
    request = wire.parse_transcription(fields)
    assert (request.stream, request.language, request.prompt) == (True, "en", "Dashwood")
    assert not wire.parse_transcription({**fields, "model": ["whisper-1"]}).stream
    verbose = {
        "model": ["whisper-1"],
        "response_format": ["verbose_json"],
        "timestamp_granularities[]": ["word"],
    }
    assert wire.parse_transcription(verbose).words
    assert refused(wire.parse_transcription, {**verbose, "response_format": ["json"]}).status == 400
    assert (
        refused(wire.parse_transcription, {"model": ["m"], "response_format": ["xml"]}).param
        == "response_format"
    )
    assert refused(wire.parse_transcription, {"model": ["m"], "language": ["English"]}).param == "language"
    assert refused(wire.parse_transcription, {}).param == "model"


def test_segments_end_at_sentences_and_pauses_but_not_at_abbreviations() -> None:
    words = [
        {"text": "Mr.", "start": 0.0, "end": 0.3},
        {"text": "Smith", "start": 0.3, "end": 0.7},
        {"text": "left.", "start": 0.7, "end": 1.0},
        {"text": "Then", "start": 1.2, "end": 1.4},
        {"text": "silence", "start": 1.4, "end": 1.8},
        {"text": "fell", "start": 3.5, "end": 3.9},
    ]
    segments = wire.segments_of("Mr. Smith left. Then silence fell", 10.0, 14.0, words)
    assert [(s.text, s.start, s.end) for s in segments] == [
        ("Mr. Smith left.", 10.0, 11.0),
        ("Then silence", 11.2, 11.8),
        ("fell", 13.5, 13.9),
    ]
    assert segments[0].words[0] == {"word": "Mr.", "start": 10.0, "end": 10.3}
    assert [(s.start, s.end) for s in wire.segments_of("Hello", 2.0, 5.5, None)] == [(2.0, 5.5)]
    assert wire.segments_of("", 0.0, 1.0, None) == []


def test_subtitles_and_verbose_json_are_built_from_the_segments() -> None:
    segments = [wire.Segment(0.0, 1.5, "Hello there."), wire.Segment(61.25, 3723.5, "Later.")]
    request = wire.TranscriptionRequest(model="whisper-1", response_format="srt")
    kind, srt = wire.transcription_response(request, "Hello there. Later.", segments, 3724.0, "en")
    assert kind.startswith("text/plain") and srt == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n00:01:01,250 --> 01:02:03,500\nLater.\n"
    )
    vtt_request = wire.TranscriptionRequest(model="whisper-1", response_format="vtt")
    _, vtt = wire.transcription_response(vtt_request, "", segments[:1], 2.0, "en")
    assert vtt == "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n"
    verbose_request = wire.TranscriptionRequest(model="whisper-1", response_format="verbose_json")
    _, verbose = wire.transcription_response(verbose_request, "Hello there. Later.", segments, 3724.0, "en")
    assert '"language": "english"' in verbose and '"text": " Hello there."' in verbose


def test_a_long_upload_is_cut_into_pieces_at_its_pauses() -> None:
    rng = np.random.default_rng(1)
    speech = (rng.standard_normal(16000 * 70) * 3000).astype(np.int16)
    speech[16000 * 25 : 16000 * 26] = 0  # a pause within the last 6 s before 28 s
    speech[16000 * 50 : 16000 * 51] = 0
    cut = pieces(speech)
    assert [round(p.start, 1) for p in cut] == [0.0, round(cut[0].end, 1), round(cut[1].end, 1)]
    assert 25.0 <= cut[0].end <= 26.0 and 50.0 <= cut[1].end <= 51.0
    assert sum(len(p.pcm) for p in cut) == speech.nbytes and cut[-1].end == 70.0
    assert len(pieces(speech[:16000])) == 1


def test_uploads_decode_to_16_khz_mono_and_refuse_what_is_not_audio() -> None:
    stereo = np.zeros((44100 * 2, 2), dtype=np.float32)
    stereo[:, 0] = np.sin(np.arange(44100 * 2) / 10) * 0.5
    for fmt in ("WAV", "FLAC", "OGG"):
        data = io.BytesIO()
        soundfile.write(data, stereo, 44100, format=fmt)
        samples = decode_upload(data.getvalue(), 60.0)
        assert samples.dtype == np.int16 and abs(len(samples) - 32000) <= 400, fmt
    with pytest.raises(AudioUploadError, match="longer than 1 s"):
        decode_upload(io_wav(np.zeros(16000 * 3, dtype=np.int16)), 1.0)
    for junk in (b"", b"hello, world" * 100, b"RIFF" + bytes(100)):
        with pytest.raises(AudioUploadError):
            decode_upload(junk, 60.0)


def io_wav(samples: np.ndarray[Any, Any]) -> bytes:
    data = io.BytesIO()
    soundfile.write(data, samples, 16000, format="WAV", subtype="PCM_16")
    return data.getvalue()


def test_the_streamed_wav_header_says_24_khz_16_bit_mono_of_unknown_length() -> None:
    header = streamed_wav_header(24000)
    assert len(header) == 44 and header[:4] == b"RIFF" and header[36:40] == b"data"
    assert struct.unpack("<HHIIHH", header[20:36]) == (1, 1, 24000, 48000, 2, 16)
    assert header[4:8] == header[40:44] == b"\xff\xff\xff\xff"


@pytest.mark.parametrize("kind", sorted(COMPRESSED))
def test_compressed_speech_streams_as_it_is_encoded_and_decodes_to_the_same_length(kind: str) -> None:
    tone = (np.sin(np.arange(24000 * 3) / 4) * 8000).astype("<i2").tobytes()
    encoder = CompressedAudio(kind, 24000)
    parts = [encoder.encode(tone[start : start + 9602]) for start in range(0, len(tone), 9602)]
    parts.append(encoder.close())
    assert sum(map(len, parts[:-1])) > 0  # bytes left before the end: the stream did not wait for it
    samples = decode_upload(b"".join(parts), 60.0)
    assert abs(len(samples) - 16000 * 3) <= 16000 * 0.1, kind


async def test_a_lane_serves_in_turn_and_refuses_past_its_waiting_line() -> None:
    lane = Lane(max_waiting=1)
    order: list[str] = []
    release = asyncio.Event()

    async def request(name: str) -> None:
        with lane.place():
            async with lane.turn():
                order.append(name)
                await asyncio.wait_for(release.wait(), 5.0)

    first = asyncio.create_task(request("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(request("second"))
    await asyncio.sleep(0)
    assert lane.taken == 2 and lane.full
    with pytest.raises(EngineBusy), lane.place():
        pass
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5.0)
    assert order == ["first", "second"] and lane.taken == 0 and not lane.full


def test_a_place_in_line_is_taken_on_arrival_before_any_turn_is() -> None:
    lane = Lane(max_waiting=0)
    with lane.place():  # a request still reading its upload: nobody holds the turn yet
        assert lane.full
        with pytest.raises(EngineBusy), lane.place():
            pass
    assert lane.taken == 0 and not lane.full


async def test_an_engine_keeps_the_configs_params_whoever_holds_the_turn() -> None:
    @dataclasses.dataclass
    class Params:
        max_tokens: int = 200
        temperature: float = 0.7

    class Node:
        params = Params()

    engine = Engine("llm", Node(), max_waiting=1)  # type: ignore[arg-type]
    with engine.admitted():
        async with engine.serving(max_tokens=1, temperature=None) as node:
            assert node.params == Params(max_tokens=1)
            assert engine.defaults == Params()  # what another request arriving now reads
    assert engine.processor.params == Params()


def test_a_discarded_muxer_is_closed_and_closing_twice_is_harmless() -> None:
    encoder = CompressedAudio("mp3", 24000)
    encoder.encode(bytes(48000))
    assert not encoder.closed
    encoder.discard()
    encoder.discard()
    assert encoder.closed


def test_the_config_check_names_nodes_that_cannot_answer_an_endpoint() -> None:
    text = """
name: bad
nodes:
  openai: {type: openai.api, transcriptions: tone, speech: missing, chat: null}
  tone: {type: source.tone}
  out: {type: debug.print}
edges:
  - tone -> out
"""
    _, problems = config.compile_text(text, "bad.yaml")
    shown = [(p.node, p.key, p.line, p.message) for p in problems]
    assert shown == [
        ("openai", "transcriptions", 4, "transcriptions names 'tone' (source.tone), which cannot answer it"),
        ("openai", "speech", 4, "speech names 'missing', which is no node of this config"),
    ]
