"""Clients that stall, floods of sockets and malformed requests: every wait the server makes is bounded.

Silent sessions end after ``idle_timeout``; connections that send no complete request are closed after
``header_timeout`` (idle keep-alive ones after ``keepalive_timeout``); at the connection cap the oldest
connection without a request makes room; under a low open-files limit ``/health`` still answers and the
log stays short; protocol defects found by probing a served config get an error reply, not a lost session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from pipeline import config
from pipeline.logs import RateLimit
from tests.certificates import self_signed
from tests.test_websocket_server import COUNTER_GRAPH, TIMEOUT, _until, connect, serving
from transports.websocket import protocol
from transports.websocket.connections import BACKLOG, connection_cap, tls_context
from transports.websocket.protocol import PushToTalk, Start, UserText
from transports.websocket.session import Inbound

ROOT = Path(__file__).resolve().parent.parent
GRAPH = COUNTER_GRAPH.replace("REALTIME", "false")  # max_message_bytes 4096: the hard limit is 16 KiB


async def _raw(port: int, request: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection (keep the writer: a collected one closes the socket)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if request:
        writer.write(request)
        await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (everything it sent is read and dropped)."""
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(65536), TIMEOUT):
            pass
    return True


# --- timeouts ------------------------------------------------------------------------------------


async def test_a_silent_session_ends_after_idle_timeout() -> None:
    # The deadline was given to asyncio.timeout() as an absolute time: a client that never sent a
    # single message kept its slot for ever, and four of them locked everyone out.
    async with (
        serving(GRAPH, "server.idle_timeout=0.3") as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        assert await client.closed() == 1000
        assert client.of("error")[-1]["message"] == "no message for 0.3 s: the conversation ended"
        await _until(lambda: not server.sessions, "the slot to be freed")


async def test_connections_that_send_no_complete_request_are_closed_after_header_timeout() -> None:
    async with (
        serving(GRAPH, "server.header_timeout=0.3") as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,  # a session outlives the deadline: its headers came in time
    ):
        silent, kept = await _raw(server.port)
        slow, also_kept = await _raw(server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank
        assert await _closed_by_server(silent) and await _closed_by_server(slow)
        kept.close()
        also_kept.close()
        assert server.connections.timed_out == 2
        await client.ws.send_str('{"type":"text","text":"still here?"}')
        assert await client.reply() == "heard 0 ms"
        assert (await http.get(base / "health")).status == 200


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() -> None:
    async with serving(GRAPH, "server.keepalive_timeout=0.3") as (server, _):
        reader, _ = await _raw(server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200") and b"close" not in head.lower()
        assert await _closed_by_server(reader)
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        reader, writer = await _raw(server.port, request)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(request[:-2])  # a second request whose headers never end
        assert await _closed_by_server(reader)


# --- the connection cap --------------------------------------------------------------------------


def test_the_connection_cap_leaves_descriptors_for_the_rest_of_the_server() -> None:
    assert connection_cap(256) == 256 - 32 - 2 * BACKLOG  # a burst of accepts, and the shed still closing
    assert connection_cap(1024) == 1024 - 128 - 2 * BACKLOG
    assert connection_cap(256, 50) == 50
    assert connection_cap(256, 10_000) == connection_cap(256)  # never past the open-files limit
    assert connection_cap(256, 0, 40) == connection_cap(256) - 40  # what the process holds already


async def test_at_the_cap_the_oldest_connections_without_a_request_make_room() -> None:
    async with (
        serving(GRAPH, "server.max_connections=6", "server.header_timeout=60") as (server, base),
        aiohttp.ClientSession() as http,
    ):
        silent = [await _raw(server.port) for _ in range(12)]
        assert (await http.get(base / "health")).status == 200
        assert await _closed_by_server(silent[0][0])  # the oldest went first
        await _until(lambda: server.connections.open <= 6, "the cap to hold")
        assert server.connections.shed >= 7
        handlers = server._runner.server.connections if server._runner and server._runner.server else []
        assert len(handlers) <= 6  # aiohttp was told of every connection shed
        for _, writer in silent:
            writer.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused() -> None:
    async with (
        serving(GRAPH, "server.max_connections=2") as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as a,
        connect(http, base) as b,
    ):
        for client in (a, b):
            await client.wait_for(lambda m: m["type"] == "session", "a session id")
        extra, _ = await _raw(server.port)
        assert await _closed_by_server(extra)
        await a.ws.send_str('{"type":"text","text":"unharmed?"}')
        assert await a.reply() == "heard 0 ms"


FD_SERVER = """
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from pipeline import config, logs
from transports.websocket.server import VoiceServer

TEXT = '''
server: {type: websocket, port: 0}
nodes:
  mic: {type: websocket.input}
  out: {type: websocket.output, loopback: true}
edges: [mic -> out]
'''

async def main() -> None:
    logs.configure(0)
    compiled, _ = config.compile_text(TEXT, "<fd>")
    server = VoiceServer(compiled)
    await server.start()
    print(server.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes it
    await asyncio.wait_for(server.stop(), 10)

asyncio.run(main())
"""


def test_under_fd_pressure_health_answers_and_the_log_stays_small() -> None:
    # Before: 300 silent sockets against 256 descriptors left /health unanswered (timed out after
    # 10 s) and wrote 864 log lines in 13 s ("Too many open files" on every accept).
    silent_count = 300
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < silent_count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    server = subprocess.Popen(
        [sys.executable, "-c", FD_SERVER],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    silent: list[socket.socket] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        deadline = time.monotonic() + 30
        while len(silent) < silent_count and time.monotonic() < deadline:
            silent.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        assert len(silent) == silent_count
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as health:
            health.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := health.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
    finally:
        for sock in silent:
            sock.close()
        _, errors = server.communicate("", timeout=30)
    assert server.returncode == 0, errors
    assert "Too many open files" not in errors
    assert len(errors.splitlines()) <= 12, errors  # the shedding warning, rate-limited


def test_repeated_lines_are_rate_limited_and_the_rest_is_counted() -> None:
    now = [0.0]
    limit = RateLimit(burst=3, interval=60.0, clock=lambda: now[0])

    def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("asyncio", level, __file__, 1, message, None, None)

    passed = [
        limit.filter(record("socket.accept() out of system resource\nsocket: fd=6")) for _ in range(100)
    ]
    assert passed.count(True) == 3 and limit.suppressed == 97
    assert limit.filter(record("another message"))
    assert all(limit.filter(record("verbose", logging.INFO)) for _ in range(10))  # below WARNING: all
    now[0] = 61.0
    after = record("socket.accept() out of system resource\nsocket: fd=6")
    assert limit.filter(after) and after.getMessage().endswith("(97 similar messages suppressed)")


# --- protocol defects ----------------------------------------------------------------------------


async def test_a_message_far_over_the_hard_limit_closes_with_1009_not_a_reset() -> None:
    # Closing a socket with the client's bytes unread sends a reset: the client saw 1006, not 1009.
    async with (
        serving(GRAPH) as (server, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        await client.wait_for(lambda m: m["type"] == "session", "a session id")
        with contextlib.suppress(ConnectionError):
            await client.ws.send_bytes(bytes(8_000_000))
        assert await client.closed() == protocol.CLOSE_TOO_BIG
        await _until(lambda: not server.sessions and not server.connections.open, "the connection to go")


async def test_a_raw_non_ascii_query_gets_a_400_and_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(GRAPH) as (server, _):
        reader, _ = await _raw(server.port, b"GET /health?x=\xff\xc3\xa9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
        assert b" 400 " in head
        assert await _closed_by_server(reader)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


async def test_deeply_nested_json_gets_an_error_reply_and_the_session_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        serving(GRAPH, "server.max_message_bytes=65536") as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        await client.ws.send_str("[" * 5000)
        await client.ws.send_str('{"type": "text", "text": ' + '{"a": ' * 3000 + "1" + "}" * 3001)
        await client.ws.send_str('{"type":"text","text":"still there?"}')
        assert await client.reply() == "heard 0 ms"
        errors = [m["message"] for m in client.of("error")]
        assert len(errors) == 2 and all("nested too deeply" in e for e in errors), errors
    assert "Traceback" not in caplog.text


async def test_repeated_start_and_ptt_messages_coalesce_rather_than_flood() -> None:
    async with (
        serving(GRAPH) as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        for message in ('{"type":"start"}', '{"type":"ptt","pressed":true}'):
            for _ in range(300):
                await client.ws.send_str(message)
        await client.ws.send_str('{"type":"start"}')
        await client.ws.send_str('{"type":"text","text":"busy?"}')
        assert await client.reply() == "heard 0 ms"
        assert not client.of("error")


def test_the_inbound_queue_keeps_one_of_each_repeated_microphone_change() -> None:
    inbound = Inbound("s", max_controls=3)
    assert all(inbound.put(Start()) for _ in range(300))
    assert all(inbound.put(PushToTalk(True)) for _ in range(300))
    assert list(inbound._items) == [Start(), PushToTalk(True)]
    assert inbound.put(PushToTalk(False))  # a change: queued, counted
    assert not inbound.put(PushToTalk(True))  # real changes still count against max_controls
    assert not inbound.put(UserText("hi"))


async def test_a_parser_bug_costs_one_message_not_the_conversation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = protocol.parse_text

    def buggy(text: str, max_bytes: int) -> protocol.ClientEvent | protocol.ProtocolError:
        if "boom" in text:
            raise IndexError("a parser bug")
        return real(text, max_bytes)

    monkeypatch.setattr(protocol, "parse_text", buggy)
    async with (
        serving(GRAPH) as (_, base),
        aiohttp.ClientSession() as http,
        connect(http, base) as client,
    ):
        await client.ws.send_str('{"type":"boom"}')
        await client.ws.send_str('{"type":"text","text":"and now?"}')
        assert await client.reply() == "heard 0 ms"
        assert client.of("error")[0]["message"] == "the server could not read this message"
    assert "cannot parse a client message" in caplog.text and "a parser bug" in caplog.text


def test_the_new_server_keys_are_checked() -> None:
    text = "server: {type: websocket}\nnodes:\n  mic: {type: websocket.input}\n"
    text += "  out: {type: websocket.output}\nedges: [mic -> out]\n"
    good = ["server.header_timeout=0", "server.keepalive_timeout=5", "server.max_connections=0"]
    good += ["server.send_timeout=0"]
    assert config.check_text(text, overrides=good) == []
    bad_values = ("header_timeout=-1", "keepalive_timeout=0", "max_connections=-1", "send_timeout=-1")
    for bad in (f"server.{value}" for value in bad_values):
        [problem] = config.check_text(text, overrides=[bad])
        assert "out of range" in problem.message, problem
    defaults = config.ServerSettings()
    timeouts = (defaults.header_timeout, defaults.keepalive_timeout, defaults.send_timeout)
    assert timeouts == (10.0, 15.0, 30.0) and defaults.max_connections == 0


# --- TLS -----------------------------------------------------------------------------------------


async def test_tls_serves_https_and_wss_and_bounds_the_handshake(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    overrides = (f"server.tls_cert={cert}", f"server.tls_key={key}", "server.header_timeout=0.3")
    async with (
        serving(GRAPH, *overrides) as (server, base),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as http,
    ):
        assert base.scheme == "https"
        assert (await http.get(base / "health")).status == 200
        async with http.ws_connect(base / "ws") as ws:
            await ws.send_str('{"type":"text","text":"secure?"}')
            while (message := await ws.receive(timeout=TIMEOUT)).type is aiohttp.WSMsgType.TEXT:
                if json.loads(message.data).get("final") is True and "heard" in message.data:
                    break
            assert json.loads(message.data)["text"] == "heard 0 ms"
        mute, kept = await _raw(server.port)  # connects, never says hello
        assert await _closed_by_server(mute)
        kept.close()


def test_tls_needs_both_files_that_can_be_read(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert tls_context(None, None) is None
    assert isinstance(tls_context(str(cert), str(key)), ssl.SSLContext)
    with pytest.raises(OSError, match="go together"):
        tls_context(str(cert), None)
    with pytest.raises(OSError, match="cannot load tls_cert"):
        tls_context(str(key), str(key))


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")
async def test_a_download_the_client_stops_reading_is_dropped_after_send_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "20250101-120000-abcdef"
    folder.mkdir()
    (folder / "transcript.json").write_text('{"messages": []}')
    (folder / "user.wav").write_bytes(b"RIFF" + bytes(20_000_000))  # far more than the socket buffers
    overrides = (f"server.recordings={tmp_path}", "server.send_timeout=0.5")
    async with serving(GRAPH, *overrides) as (server, _):
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.setblocking(False)
        loop = asyncio.get_running_loop()
        with reader:
            await asyncio.wait_for(loop.sock_connect(reader, ("127.0.0.1", server.port)), TIMEOUT)
            path = f"/api/conversations/{folder.name}/audio/user.wav"
            await loop.sock_sendall(reader, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await _until(lambda: server.connections.open == 1, "the download to start")
            await _until(lambda: server.connections.open == 0, "the stalled download to be dropped")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
