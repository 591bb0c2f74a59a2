"""Access to the served routes over real sockets (127.0.0.1, port 0): keys, session tokens, Host, Origin.

Every protected route is tried with no credentials, a forged token, an expired one (the guard's clock is
moved by hand, nothing sleeps), one scoped elsewhere, a reused one and a valid one. Refusals must come
before the websocket upgrade and start no conversation. Exposing the server without auth must be
refused before anything is bound.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from pipeline import config
from pipeline.config import ServerSettings
from transports.websocket.auth import AuthConfigError, Scope
from transports.websocket.server import VoiceServer

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
KEY = "test-key-0123456789abcdef"
SCRAPE_KEY = "scrape-key-0123456789abcdef"
CONVERSATION = "20250101-120000-abcdef"
OTHER = "20250101-130000-abcdef"
GRAPH = """
name: locked
server: {type: websocket, port: 0, auth: api_key, max_sessions: 8, recordings: "RECORDINGS"}
settings: {end_timeout: 2.0, cancel_timeout: 1.0}
nodes:
  mic: {type: websocket.input}
  out: {type: websocket.output, loopback: true}
edges:
  - mic -> out
"""


class Clock:
    """The guard's clock, moved by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    for session_id in (CONVERSATION, OTHER):
        folder = tmp_path / "recordings" / session_id
        folder.mkdir(parents=True)
        (folder / "transcript.json").write_text(json.dumps({"session_id": session_id, "messages": []}))
        (folder / "user.wav").write_bytes(b"RIFF" + bytes(40))
    return tmp_path / "recordings"


@contextlib.asynccontextmanager
async def serving(
    recordings: Path, *overrides: str, keys: str | None = KEY, scrape_keys: str | None = None
) -> AsyncIterator[tuple[VoiceServer, URL, Clock]]:
    compiled, problems = config.compile_text(
        GRAPH.replace("RECORDINGS", str(recordings)), "<test>", overrides
    )
    assert compiled is not None and not problems, problems
    with pytest.MonkeyPatch.context() as patch:
        if keys is None:
            patch.delenv("VOXGRAPH_API_KEYS", raising=False)
        else:
            patch.setenv("VOXGRAPH_API_KEYS", keys)
        if scrape_keys is None:
            patch.delenv("VOXGRAPH_METRICS_KEYS", raising=False)
        else:
            patch.setenv("VOXGRAPH_METRICS_KEYS", scrape_keys)
        patch.delenv("VOXGRAPH_TOKEN_SECRET", raising=False)
        server = VoiceServer(compiled)
    clock = Clock()
    server.guard.clock = clock
    await server.start()
    try:
        yield server, URL(server.url), clock
    finally:
        await server.stop()


async def mint(http: aiohttp.ClientSession, base: URL, **body: Any) -> str:
    async with http.post(base / "api/session-token", json=body, headers=bearer(KEY)) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["token"])


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


ROUTES = ["ws", "ws-root", "listing", "transcript", "audio", "mint"]
CASES = ["none", "forged", "expired", "scope", "reused", "valid"]


async def attempt(http: aiohttp.ClientSession, base: URL, route: str, token: str | None) -> tuple[int, Any]:
    """Status (101 for an accepted websocket, with the first message) and body of one request."""
    query = {"token": token} if token is not None else {}
    if route in ("ws", "ws-root"):
        url = (base / "ws" if route == "ws" else base).with_query(query)
        try:
            async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=TIMEOUT)) as ws:
                return 101, await ws.receive_json(timeout=TIMEOUT)
        except aiohttp.WSServerHandshakeError as error:
            return error.status, None
    if route == "mint":  # keys only: a "token" here is sent where a key goes
        headers = bearer(token) if token is not None else {}
        async with http.post(base / "api/session-token", headers=headers) as response:
            return response.status, await response.json()
    path = {
        "listing": "api/conversations",
        "transcript": f"api/conversations/{CONVERSATION}",
        "audio": f"api/conversations/{CONVERSATION}/audio/user.wav",
    }[route]
    headers = bearer(token) if token is not None and route != "audio" else {}  # downloads: ?token=
    params = query if route == "audio" else {}
    async with http.get(base / path, headers=headers, params=params) as response:
        body = await response.read()
        return response.status, json.loads(body) if response.content_type == "application/json" else body


async def credential(
    http: aiohttp.ClientSession, base: URL, clock: Clock, route: str, case: str
) -> str | None:
    """The credential of ``case`` for ``route`` (a reused one has been used once already)."""
    if case == "none":
        return None
    if case == "forged":
        if route == "mint":
            return "not-a-key-" + KEY
        token = await mint(http, base)
        return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    if case == "expired":
        token = await mint(http, base, ttl=10)
        clock.now += 10
        return token
    if case == "scope":
        if route == "transcript" or route == "audio":
            return await mint(http, base, conversation=OTHER)
        if route == "listing":
            return await mint(http, base, config="another-config")
        return await mint(http, base, conversation=CONVERSATION)
    if route == "mint":
        return KEY  # keys are the only credential for minting, and are not used up
    token = await mint(http, base)
    if case == "reused":
        status, _ = await attempt(http, base, route, token)
        assert status in (101, 200)
    return token


def expected(route: str, case: str) -> tuple[int, str | None]:
    """Status and short reason: tokens open a conversation once and read the API until they expire."""
    if case == "valid" or (case == "reused" and route not in ("ws", "ws-root")):
        return (101 if route.startswith("ws") else 200), None
    if route == "mint":  # a token is never a key
        return 401, "invalid API key" if case == "forged" else "API key required"
    return 401, {
        "none": "credentials required",
        "forged": "invalid token",
        "expired": "token expired",
        "scope": "token not valid here",
        "reused": "token already used",
    }[case]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("route", ROUTES)
async def test_every_protected_route_takes_only_a_valid_credential(
    recordings: Path, route: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(recordings) as (server, base, clock), aiohttp.ClientSession() as http:
        sent = await credential(http, base, clock, route, case)
        with caplog.at_level(logging.INFO, "transports.websocket"):
            status, body = await attempt(http, base, route, sent)
        want, reason = expected(route, case)
        assert status == want, (status, body)
        if route.startswith("ws") and status == 101:
            assert body["type"] == "session"
        elif status == 401:
            assert reason is not None
            assert body in (None, {"error": reason})  # a websocket refusal's body is not read by the client
            assert not [r for r in caplog.records if "started" in r.getMessage()]  # no session began
            assert any(reason in r.getMessage() for r in caplog.records if "refused" in r.getMessage())
        elif route == "mint":
            assert set(body) == {"token", "expires_at", "expires_in", "scope"}
        elif route == "audio":
            assert body == b"RIFF" + bytes(40)
        assert len(server.guard.used) <= 1


async def test_openai_routes_take_only_a_key_and_v3_tokens_open_nothing_here(recordings: Path) -> None:
    async with serving(recordings) as (server, base, _), aiohttp.ClientSession() as http:
        browser = await mint(http, base)
        v3, _ = server.guard.issue(60, Scope(server.guard.config_name, route="/v3/ws"))
        chat = base / "v1/chat/completions"
        for token in (browser, v3):
            for headers, params in ((bearer(token), {}), ({}, {"token": token})):
                async with http.post(chat, headers=headers, params=params, json={}) as response:
                    assert response.status == 401
                    assert (await response.json())["error"]["code"] == "invalid_api_key"
        async with http.post(chat, headers=bearer(KEY), json={}) as response:
            assert response.status == 404  # past the guard: this config serves no OpenAI routes
        for route in ("listing", "transcript", "ws"):
            status, _ = await attempt(http, base, route, v3)
            assert status == 401, route
        status, _ = await attempt(http, base, "listing", browser)
        assert status == 200  # a browser's token still reads the conversation API


async def test_a_key_opens_everything_but_never_travels_in_a_url(
    recordings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with serving(recordings) as (_, base, _), aiohttp.ClientSession() as http:
            async with http.ws_connect(base / "ws", headers=bearer(KEY)) as ws:
                assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "session"
            listing = await http.get(base / "api/conversations", headers=bearer(KEY))
            assert listing.status == 200 and len(await listing.json()) == 2
            assert (await http.get(base / "api/conversations", params={"token": KEY})).status == 401
            assert (await http.get(base / "api/conversations", headers=bearer("wrong" * 5))).status == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused GET /api/conversations: 401 invalid API key" in logged
    assert KEY not in logged and "wrong" * 5 not in logged


OPERATOR_MATRIX = {  # credential -> the routes it opens; every other route answers 401
    "none": set(),
    "api key": {"metrics", "load", "listing", "ws", "mint"},
    "scrape key": {"metrics", "load"},
    "session token": {"listing", "ws"},
    "wrong key": set(),
}


async def test_scrape_keys_open_only_metrics_and_load_and_tokens_never_do(
    recordings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = sorted(OPERATOR_MATRIX["api key"])
    seen: dict[tuple[str, str], int] = {}
    with caplog.at_level(logging.DEBUG):
        async with (
            serving(recordings, scrape_keys=SCRAPE_KEY) as (_, base, _),
            aiohttp.ClientSession() as http,
        ):
            for credential_name in OPERATOR_MATRIX:
                for route in routes:
                    seen[credential_name, route] = await operator_attempt(http, base, credential_name, route)
    for (credential_name, route), status in seen.items():
        opened = route in OPERATOR_MATRIX[credential_name]
        assert status == ((101 if route == "ws" else 200) if opened else 401), (credential_name, route)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused GET /api/conversations: 401 key not valid here" in logged
    assert "refused GET /metrics: 401 API key or scrape key required" in logged
    assert SCRAPE_KEY not in logged and KEY not in logged


async def operator_attempt(http: aiohttp.ClientSession, base: URL, credential_name: str, route: str) -> int:
    """The status of one request for ``route`` with the credential a client of that kind sends."""
    sent = {
        "none": None,
        "api key": KEY,
        "scrape key": SCRAPE_KEY,
        "session token": await mint(http, base),
        "wrong key": "wrong-key-0123456789abcdef",
    }[credential_name]
    headers = bearer(sent) if sent is not None else {}
    if route == "ws":
        in_url = credential_name == "session token"  # a browser's token travels in the URL
        url = (base / "ws").with_query({"token": sent} if in_url and sent else {})
        try:
            async with http.ws_connect(url, headers={} if in_url else headers) as ws:
                assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "session"
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status
    if route == "mint":
        async with http.post(base / "api/session-token", headers=headers) as response:
            return response.status
    path = {"metrics": "metrics", "load": "load", "listing": "api/conversations"}[route]
    async with http.get(base / path, headers=headers) as response:
        body = await response.text()
        if response.status == 200 and route == "metrics":
            assert "voxgraph_sessions_active" in body
        return response.status


async def test_open_routes_stay_open_and_say_whether_a_token_is_needed(recordings: Path) -> None:
    async with serving(recordings) as (_, base, _), aiohttp.ClientSession() as http:
        for path in ("", "health", "static/app.js"):
            assert (await http.get(base / path)).status == 200, path
        described = await (await http.get(base / "api/auth")).json()
        assert described == {"auth": "api_key", "token_ttl": 300}


async def test_minting_returns_a_scoped_token_with_its_expiry(recordings: Path) -> None:
    async with (
        serving(recordings, "server.token_ttl=60") as (server, base, clock),
        aiohttp.ClientSession() as http,
    ):
        body = {"ttl": 30, "conversation": CONVERSATION}
        async with http.post(base / "api/session-token", json=body, headers=bearer(KEY)) as response:
            minted = await response.json()
        assert minted["expires_in"] == 30 and minted["expires_at"] == int(clock.now) + 30
        assert minted["scope"] == {"config": "locked", "conversation": CONVERSATION}
        transcript = await http.get(
            base / f"api/conversations/{CONVERSATION}", params={"token": minted["token"]}
        )
        assert transcript.status == 200
        for bad in ({"ttl": 61}, {"ttl": "5"}, {"conversation": "../x"}, {"user": "me"}, [1]):
            async with http.post(base / "api/session-token", json=bad, headers=bearer(KEY)) as response:
                assert response.status == 400 and "error" in await response.json(), bad
        bad_json = await http.post(base / "api/session-token", data=b"{nope", headers=bearer(KEY))
        assert bad_json.status == 400
        assert server.guard.mint(scope=Scope("locked"))["scope"]["config"] == "locked"


# --- Host and Origin ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["ws", "listing", "transcript"])
async def test_a_foreign_host_or_origin_is_forbidden_before_the_upgrade(recordings: Path, route: str) -> None:
    async with serving(recordings) as (_, base, _), aiohttp.ClientSession() as http:
        url = base / "ws" if route == "ws" else base / "api/conversations"
        if route == "transcript":
            url = base / f"api/conversations/{CONVERSATION}"
        for headers in (
            {"Host": "attacker.example"},
            {"Origin": "http://attacker.example"},
            {"Origin": "null"},
        ):
            headers |= bearer(KEY)
            if route == "ws":
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(url, headers=headers)
                assert refused.value.status == 403, headers
            else:
                response = await http.get(url, headers=headers)
                assert response.status == 403, headers
                assert (await response.json())["error"] in ("host not allowed", "origin not allowed")


async def test_the_pages_own_origin_a_listed_one_or_none_is_allowed(recordings: Path) -> None:
    listed = "server.allowed_origins=[https://app.example]"
    async with serving(recordings, listed) as (_, base, _), aiohttp.ClientSession() as http:
        own = f"http://127.0.0.1:{base.port}"
        for origin in (own, "https://app.example", None):
            headers = bearer(KEY) | ({"Origin": origin} if origin else {})
            async with http.ws_connect(base / "ws", headers=headers) as ws:
                assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "session", origin
            assert (await http.get(base / "api/conversations", headers=headers)).status == 200
        localhost = {"Host": f"localhost:{base.port}"} | bearer(KEY)
        assert (await http.get(base / "api/conversations", headers=localhost)).status == 200


async def test_cors_is_closed_unless_configured_and_then_preflights_are_answered(recordings: Path) -> None:
    origin = "https://app.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "GET"}
    asked = {"Access-Control-Request-Headers": "authorization"} | preflight
    async with serving(recordings) as (_, base, _), aiohttp.ClientSession() as http:
        response = await http.options(base / "api/conversations", headers=asked)
        assert response.status == 403 and "Access-Control-Allow-Origin" not in response.headers
    async with (
        serving(recordings, f"server.cors_origins=[{origin}]") as (_, base, _),
        aiohttp.ClientSession() as http,
    ):
        response = await http.options(base / "api/conversations", headers=asked)
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        get = await http.get(base / "api/conversations", headers={"Origin": origin} | bearer(KEY))
        assert get.status == 200 and get.headers["Access-Control-Allow-Origin"] == origin
        with pytest.raises(aiohttp.WSServerHandshakeError):  # CORS opens the API, not conversations
            await http.ws_connect(base / "ws", headers={"Origin": origin} | bearer(KEY))


async def test_without_auth_on_loopback_everything_works_as_before_but_host_and_origin_are_checked(
    recordings: Path,
) -> None:
    async with (
        serving(recordings, "server.auth=none", keys=None) as (_, base, _),
        aiohttp.ClientSession() as http,
    ):
        async with http.ws_connect(base / "ws") as ws:
            assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "session"
        assert (await http.get(base / "api/conversations")).status == 200
        assert (await http.get(base / "api/auth")).status == 200
        assert (await http.post(base / "api/session-token")).status == 404  # nothing to mint
        assert (
            await http.get(base / "api/conversations", headers={"Host": "attacker.example"})
        ).status == 403


# --- refusing to start ----------------------------------------------------------------------------


def _compiled(recordings: Path, *overrides: str) -> config.Compiled:
    compiled, problems = config.compile_text(
        GRAPH.replace("RECORDINGS", str(recordings)), "<test>", overrides
    )
    assert compiled is not None and not problems, problems
    return compiled


def test_exposing_the_server_without_auth_is_a_config_problem() -> None:
    text = "server: {type: websocket, host: 0.0.0.0}\nnodes:\n  mic: {type: websocket.input}\n"
    text += "  out: {type: websocket.output}\nedges: [mic -> out]\n"
    [problem] = config.check_text(text, "exposed.yaml")
    assert problem.line == 1 and "all interfaces" in problem.message and "without auth" in problem.message
    assert "auth: api_key" in (problem.fix or "")
    assert config.check_text(text, overrides=["server.auth=api_key"]) == []
    assert config.check_text(text, overrides=["server.allow_unauthenticated=true"]) == []
    [problem] = config.check_text(text.replace("0.0.0.0", "127.0.0.1"), overrides=["server.host=10.0.0.5"])
    assert problem.file == "--set server.host" and "not a loopback address" in problem.message
    [problem] = config.check_text(text, overrides=["server.auth=password"])
    assert "auth" in problem.message  # the bad value is reported, not the exposure


def test_the_cli_refuses_to_expose_the_server_without_auth_before_binding() -> None:
    command = [sys.executable, "-m", "pipeline", "run", "configs/examples/echo-websocket.yaml"]
    command += ["--set", "server.host=0.0.0.0", "--set", "server.port=0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "all interfaces" in result.stderr and "allow_unauthenticated" in result.stderr
    assert "serving" not in result.stdout


def test_the_cli_names_the_missing_key_variable() -> None:
    command = [sys.executable, "-m", "pipeline", "run", "configs/examples/echo-websocket.yaml"]
    command += ["--set", "server.auth=api_key", "--set", "server.api_keys_env=NO_SUCH_KEYS_HERE"]
    env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_KEYS_HERE"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "NO_SUCH_KEYS_HERE is unset or empty" in result.stderr


def test_the_server_api_refuses_to_expose_itself_without_auth(recordings: Path) -> None:
    compiled = _compiled(recordings, "server.auth=none")
    for host, where in (
        ("0.0.0.0", "all interfaces"),
        ("::", "all interfaces"),
        ("10.0.0.5", "not a loopback"),
    ):
        with pytest.raises(AuthConfigError, match=where):
            VoiceServer(compiled, ServerSettings(host=host, port=0))  # refused before anything is bound


def test_allow_unauthenticated_warns_on_every_start_and_the_banner_says_all_interfaces(
    recordings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compiled = _compiled(recordings, "server.auth=none")
    settings = ServerSettings(host="0.0.0.0", port=8123, allow_unauthenticated=True)
    with caplog.at_level(logging.WARNING):
        first = VoiceServer(compiled, settings)
        VoiceServer(compiled, settings)
    warnings = [r.getMessage() for r in caplog.records if "WITHOUT authentication" in r.getMessage()]
    assert len(warnings) == 2
    assert first.listening.startswith("on all interfaces (0.0.0.0), port 8123")  # never bound here
    assert VoiceServer(compiled, ServerSettings(port=8123)).listening == "at http://127.0.0.1:8123/"


# --- the page -------------------------------------------------------------------------------------


async def test_the_page_uses_a_token_from_its_address_or_the_embedding_sites_hook(
    recordings: Path, tmp_path: Path
) -> None:
    """Headless Chromium against a locked server: ``#token=`` opens one conversation and lists past
    ones (download links carry the token); ``window.voxgraphSessionToken()`` supplies one per start."""
    from playwright.async_api import async_playwright

    from tests.test_browser import CHROMIUM, FLAGS

    assert CHROMIUM.exists(), "chromium is missing: run ./setup.sh"
    async with serving(recordings) as (_, base, _), aiohttp.ClientSession() as http:
        tokens = [await mint(http, base) for _ in range(4)]  # the address's; the hook's: a listing, 2 starts
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=FLAGS
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{base}#token={tokens[0]}")
                assert "#token" not in page.url  # taken out of the address bar
                link = page.locator(".conv-links a").first
                await link.wait_for(timeout=TIMEOUT * 1000)
                href = await link.get_attribute("href")
                assert href is not None and "?token=" in href
                assert (await http.get(URL(str(base).rstrip("/") + href, encoded=True))).status == 200
                await page.click("#start")
                await page.wait_for_function("window.voxgraph.sessionId !== null", timeout=TIMEOUT * 1000)
                await page.click("#start")  # stop
                await page.wait_for_function("window.voxgraph.status === 'ended'", timeout=TIMEOUT * 1000)
                await page.click("#start")  # the address's token is used up
                await page.wait_for_function("window.voxgraph.status === 'error'", timeout=TIMEOUT * 1000)
                assert "session token" in await page.inner_text("#log")

                hooked = await browser.new_page()
                await hooked.add_init_script(
                    f"window.tokens = {json.dumps(tokens[1:])}; "
                    "window.voxgraphSessionToken = async () => window.tokens.shift();"
                )
                await hooked.goto(str(base))
                for _ in range(2):  # a fresh token for each conversation
                    await hooked.evaluate("window.voxgraph.sessionId = null")
                    await hooked.click("#start")
                    await hooked.wait_for_function(
                        "window.voxgraph.sessionId !== null", timeout=TIMEOUT * 1000
                    )
                    await hooked.click("#start")
                    await hooked.wait_for_function(
                        "window.voxgraph.status === 'ended'", timeout=TIMEOUT * 1000
                    )

                assert (
                    await hooked.evaluate("window.tokens.length") == 0
                )  # one per conversation, one for the list

                bare = await browser.new_page()
                await bare.goto(str(base))
                await bare.wait_for_function(
                    "document.querySelector('#conversations').textContent.includes('session token')",
                    timeout=TIMEOUT * 1000,
                )
            finally:
                await browser.close()
