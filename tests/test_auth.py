"""``transports.websocket.auth`` without sockets: tokens, keys, used tokens, Host / Origin / CORS rules."""

from __future__ import annotations

import logging

import pytest

from pipeline.config import ServerSettings
from transports.websocket.auth import (
    TOKEN_PREFIX,
    Attempt,
    AuthConfigError,
    Guard,
    Keys,
    Policy,
    Route,
    Scope,
    Signer,
    Token,
    TokenError,
    UsedTokens,
    classify,
    guard_for,
    host_name,
    normal_origin,
    policy_for,
)

KEY = "k" * 24
SCRAPE_KEY = "m" * 24
SECRET = "s" * 40
NOW = 1_800_000_000.0
HOST = "127.0.0.1:8000"


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def locked(clock: Clock | None = None, **settings: object) -> Guard:
    env = {
        "VOXGRAPH_API_KEYS": f"{KEY}, {'o' * 20}",
        "VOXGRAPH_METRICS_KEYS": SCRAPE_KEY,
        "VOXGRAPH_TOKEN_SECRET": SECRET,
    }
    return guard_for(ServerSettings(auth="api_key", **settings), "demo", env, clock or Clock())  # type: ignore[arg-type]


def ws(token: str | None = None, **headers: str | None) -> Attempt:
    return Attempt("GET", "/ws", upgrade=True, query_token=token, **headers)


def read(
    path: str, token: str | None = None, conversation: str | None = None, **headers: str | None
) -> Attempt:
    return Attempt("GET", path, query_token=token, conversation=conversation, **headers)  # type: ignore[arg-type]


# --- tokens -----------------------------------------------------------------------------------------


def test_a_token_verifies_until_it_expires_and_keeps_its_scope() -> None:
    signer = Signer(b"x" * 32)
    text, token = signer.mint(int(NOW) + 60, Scope("demo", "20250101-120000-abcdef"))
    assert text.startswith(TOKEN_PREFIX) and len(text) < 200
    assert signer.verify(text, NOW) == token
    assert token.scope == Scope("demo", "20250101-120000-abcdef")
    with pytest.raises(TokenError, match="token expired"):
        signer.verify(text, NOW + 60)


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),  # signature changed
        lambda t: t.replace(".", ".e30", 1),  # payload changed
        lambda t: TOKEN_PREFIX + "e30.",  # no signature
        lambda t: t.removeprefix(TOKEN_PREFIX),
        lambda t: t + "x" * 2000,  # too long to look at
        lambda t: "",
        lambda t: Signer(b"y" * 32).mint(int(NOW) + 60, Scope())[0],  # another secret
    ],
)
def test_forged_or_malformed_tokens_are_invalid(forge: object) -> None:
    signer = Signer(b"x" * 32)
    text, _ = signer.mint(int(NOW) + 60, Scope())
    with pytest.raises(TokenError, match=r"^invalid token$"):
        signer.verify(forge(text), NOW)  # type: ignore[operator]


def test_a_shared_secret_lets_several_processes_accept_each_others_tokens() -> None:
    a, b = locked(), locked()
    token = a.mint()["token"]
    assert b.check(ws(token)).allowed
    assert a.signer is not b.signer and "s" * 32 not in repr(a.signer)


def test_used_tokens_are_remembered_until_they_expire_and_the_memory_is_bounded() -> None:
    used = UsedTokens(limit=2)
    one, two, three = (Token(name, int(NOW) + 10, Scope()) for name in "abc")
    assert used.use(one, NOW) and not used.use(one, NOW)
    assert used.use(two, NOW)
    with pytest.raises(OverflowError):
        used.use(three, NOW)  # forgetting an unexpired id would allow a replay
    assert used.use(three, NOW + 10) and len(used) == 1  # the expired two were forgotten


def test_keys_match_any_configured_key_and_nothing_else() -> None:
    keys = Keys([KEY, "o" * 20])
    assert keys.matches(KEY) and keys.matches("o" * 20)
    assert not keys.matches(KEY[:-1]) and not keys.matches("") and not keys.matches(KEY + "x")
    assert KEY not in repr(keys)


# --- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("example.com.:80", "example.com"),
        ("[::1]:8000", "::1"),
        ("[::1", None),
        ("a:b", None),
        (":80", None),
    ],
)
def test_host_names_are_read_from_host_headers(header: str, name: str | None) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("origin", "normal"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com:443/", "https://app.example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("null", None),
        ("file://", None),
        ("https://a.example/path", None),
        ("https://user@a.example", None),
        ("http://a.example:99999", None),
    ],
)
def test_origins_are_normalised(origin: str, normal: str | None) -> None:
    assert normal_origin(origin) == normal


def test_routes_are_open_only_when_known_to_hold_no_secret() -> None:
    assert classify("GET", "/", False) is Route.OPEN
    assert classify("GET", "/static/app.js", False) is Route.OPEN
    assert classify("HEAD", "/health", False) is Route.OPEN
    assert classify("GET", "/api/auth", False) is Route.OPEN
    assert classify("GET", "/", True) is Route.SOCKET
    assert classify("GET", "/ws", False) is Route.SOCKET
    assert classify("POST", "/api/session-token", False) is Route.MINT
    assert classify("GET", "/metrics", False) is Route.OPERATOR
    assert classify("HEAD", "/load", False) is Route.OPERATOR
    assert classify("POST", "/metrics", False) is Route.READ
    assert classify("GET", "/api/conversations", False) is Route.READ
    assert classify("POST", "/health", False) is Route.READ
    assert classify("GET", "/elsewhere", False) is Route.READ


# --- host and origin --------------------------------------------------------------------------------


def test_hosts_default_to_loopback_names_and_ip_addresses() -> None:
    policy = policy_for(ServerSettings())
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "192.168.1.20:8000", None):
        assert policy.host_allowed(host), host
    for host in ("attacker.example:8000", "localhost.attacker.example", "", "[::1"):
        assert not policy.host_allowed(host), host


def test_exposed_servers_add_this_machines_name_and_configured_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "Box.lan")
    settings = ServerSettings(
        host="0.0.0.0", auth="api_key", allowed_hosts=["voice.example.com", ".corp.example"]
    )
    policy = policy_for(settings)
    for host in ("box.lan", "box", "box.local:8000", "voice.example.com", "a.corp.example"):
        assert policy.host_allowed(host), host
    assert not policy.host_allowed("corp.example.evil")
    assert not policy_for(ServerSettings()).host_allowed("box.lan")  # loopback: loopback names only


def test_origins_must_be_the_pages_own_or_listed() -> None:
    policy = Policy(origins=frozenset({"https://app.example"}), cors=frozenset({"https://cors.example"}))
    host = "127.0.0.1:8000"
    assert policy.origin_allowed("http://127.0.0.1:8000", host, api=False)
    assert policy.origin_allowed("https://voice.example", "voice.example:443", api=False)  # behind TLS
    assert policy.origin_allowed("https://app.example", host, api=False)
    assert not policy.origin_allowed("http://127.0.0.1:9999", host, api=False)
    assert not policy.origin_allowed("null", host, api=False)
    assert not policy.origin_allowed("https://cors.example", host, api=False)  # CORS is for the API only
    assert policy.origin_allowed("https://cors.example", host, api=True)


def test_foreign_host_or_origin_is_forbidden_before_credentials_are_looked_at() -> None:
    guard = locked()
    assert guard.check(ws(host="evil.example:8000")).status == 403
    assert (
        guard.check(ws(origin="https://evil.example", host="127.0.0.1:8000")).reason == "origin not allowed"
    )
    assert guard.check(ws(host="127.0.0.1:8000")).status == 401  # no Origin: a non-browser client
    assert guard.check(Attempt("GET", "/", host="evil.example")).allowed  # the page holds no secret


def test_cors_preflight_is_answered_only_for_configured_origins() -> None:
    guard = locked(cors_origins=["https://cors.example"])
    asked = Attempt(
        "OPTIONS", "/api/conversations", host=HOST, origin="https://cors.example", preflight="GET"
    )
    verdict = guard.check(asked)
    assert verdict.status == 204
    assert verdict.headers["Access-Control-Allow-Origin"] == "https://cors.example"
    assert "Authorization" in verdict.headers["Access-Control-Allow-Headers"]
    assert guard.check(Attempt("OPTIONS", "/api/conversations", host=HOST, preflight="DELETE")).status == 403
    plain = guard.check(read("/api/conversations", host=HOST, origin="https://cors.example"))
    assert plain.status == 401 and plain.headers["Access-Control-Allow-Origin"] == "https://cors.example"
    assert "Access-Control-Allow-Origin" not in locked().check(read("/api/conversations")).headers


# --- credentials ------------------------------------------------------------------------------------


def test_a_socket_token_is_single_use_and_must_not_be_scoped_to_a_conversation() -> None:
    clock = Clock()
    guard = locked(clock)
    token = guard.mint(ttl=30)["token"]
    assert guard.check(ws(token)).allowed
    assert guard.check(ws(token)).reason == "token already used"
    scoped = guard.mint(scope=Scope("demo", "20250101-120000-abcdef"))["token"]
    assert guard.check(ws(scoped)).reason == "token not valid here"
    other_config = guard.mint(scope=Scope("other"))["token"]
    assert guard.check(ws(other_config)).reason == "token not valid here"
    late = guard.mint(ttl=30)["token"]
    clock.now += 30
    assert guard.check(ws(late)).reason == "token expired"
    assert len(guard.used) == 1  # the refused ones were never remembered


def test_read_tokens_are_reusable_until_expiry_and_scoped_to_their_conversation() -> None:
    guard = locked()
    anyone = guard.mint()["token"]
    for _ in range(2):
        assert guard.check(read("/api/conversations", anyone)).allowed
    one = guard.mint(scope=Scope("demo", "c1"))["token"]
    assert guard.check(read("/api/conversations/c1/audio/user.wav", one, "c1")).allowed
    assert guard.check(read("/api/conversations/c2", one, "c2")).reason == "token not valid here"
    assert guard.check(read("/api/conversations", one)).reason == "token not valid here"


def test_api_keys_go_in_the_authorization_header_only() -> None:
    guard = locked()
    assert guard.check(ws(authorization=f"Bearer {KEY}")).allowed
    assert guard.check(read("/api/conversations", authorization=f"bearer {'o' * 20}")).allowed
    assert guard.check(read("/api/conversations", authorization="Bearer nope")).reason == "invalid API key"
    assert guard.check(read("/api/conversations", authorization=f"Basic {KEY}")).reason == "invalid API key"
    assert guard.check(read("/api/conversations", KEY)).reason == "invalid token"  # never in a URL
    mint = Attempt("POST", "/api/session-token", authorization=f"Bearer {guard.mint()['token']}")
    assert guard.check(mint).reason == "API key required"
    assert guard.check(Attempt("POST", "/api/session-token")).status == 401


def test_minting_bounds_the_lifetime_and_checks_the_scope() -> None:
    guard = locked(token_ttl=120)
    minted = guard.mint()
    assert minted["expires_at"] == int(NOW) + 120 and minted["expires_in"] == 120
    assert minted["scope"] == {"config": "demo", "conversation": None}
    with pytest.raises(ValueError, match=r"1\.\.120"):
        guard.mint(ttl=121)
    with pytest.raises(ValueError, match="names"):
        guard.mint(scope=Scope("demo", "../x"))


def test_a_full_used_token_memory_refuses_new_conversations_with_503() -> None:
    guard = locked()
    guard.used.limit = 1
    assert guard.check(ws(guard.mint()["token"])).allowed
    assert guard.check(ws(guard.mint()["token"])).status == 503


def test_without_auth_only_host_and_origin_are_checked() -> None:
    guard = guard_for(ServerSettings(), "demo", {"VOXGRAPH_METRICS_KEYS": "short"})  # not even read
    assert not guard.enabled
    assert guard.check(ws()).allowed and guard.check(read("/api/conversations")).allowed
    assert guard.check(read("/metrics")).allowed and guard.check(read("/load")).allowed
    assert guard.check(ws(host="evil.example")).status == 403


# --- who opens what: every credential against every kind of route ---------------------------------

CREDENTIALS = ["none", "api key", "scrape key", "session token", "v3 token", "wrong key"]
MATRIX_ROUTES = [
    "/metrics",
    "/load",
    "/api/conversations",
    "/ws",
    "/v3/ws",
    "POST /api/session-token",
    "GET /v3/token",
    "POST /v1/chat/completions",
    "GET /v1/models",
]
OPENS = {
    "none": set(),
    "api key": set(MATRIX_ROUTES),
    "scrape key": {"/metrics", "/load"},
    "session token": {"/api/conversations", "/ws"},
    "v3 token": {"/v3/ws"},
    "wrong key": set(),
}
"""What each credential opens; a refusal is a 401."""
SOCKETS = ("/ws", "/v3/ws")


def attempt_with(guard: Guard, credential: str, route: str) -> Attempt:
    """A request for ``route`` carrying ``credential`` as a client would send it."""
    sent = {
        "none": None,
        "api key": KEY,
        "scrape key": SCRAPE_KEY,
        "session token": guard.mint()["token"],
        "v3 token": guard.issue(60, Scope("demo", route="/v3/ws"))[0],
        "wrong key": "w" * 24,
    }[credential]
    authorization = f"Bearer {sent}" if sent is not None else None
    if route in SOCKETS:  # a browser's token travels in the URL; keys never do
        if credential.endswith("token"):
            return Attempt("GET", route, upgrade=True, query_token=sent)
        return Attempt("GET", route, upgrade=True, authorization=authorization)
    method, _, path = route.rpartition(" ")
    return Attempt(method or "GET", path, host=HOST, authorization=authorization)


@pytest.mark.parametrize("route", MATRIX_ROUTES)
@pytest.mark.parametrize("credential", CREDENTIALS)
def test_each_credential_opens_only_its_routes(credential: str, route: str) -> None:
    guard = locked()
    attempt = attempt_with(guard, credential, route)
    verdict = guard.check_socket(attempt) if route == "/v3/ws" else guard.check(attempt)
    if route in OPENS[credential]:
        assert verdict.allowed, verdict.reason
    else:
        assert verdict.status == 401 and verdict.headers["WWW-Authenticate"] == "Bearer"
        assert SCRAPE_KEY not in verdict.reason and KEY not in verdict.reason


@pytest.mark.parametrize("kind", ["session token", "v3 token"])
def test_a_token_opens_its_own_socket_once_and_no_other_however_sent(kind: str) -> None:
    guard = locked()
    own, other = ("/ws", "/v3/ws") if kind == "session token" else ("/v3/ws", "/ws")
    token = attempt_with(guard, kind, own).query_token
    assert token is not None
    for sent in (
        {"query_token": token},
        {"authorization": f"Bearer {token}"},
        {"authorization": token},  # raw: AssemblyAI's way, taken on its routes only
    ):
        check = guard.check_socket if other == "/v3/ws" else guard.check
        assert check(Attempt("GET", other, upgrade=True, **sent)).status == 401, sent
        for path in ("/v1/chat/completions", "/v1/audio/speech"):
            assert guard.check(Attempt("POST", path, **sent)).status == 401  # type: ignore[arg-type]
    check = guard.check_socket if own == "/v3/ws" else guard.check
    assert check(Attempt("GET", own, upgrade=True, authorization=f"Bearer {token}")).allowed
    assert check(Attempt("GET", own, upgrade=True, query_token=token)).reason == "token already used"


def test_v3_tokens_read_nothing_and_mint_as_every_token_does() -> None:
    clock = Clock()
    guard = locked(clock, token_ttl=120)
    text, token = guard.issue(60, Scope("demo", route="/v3/ws"))
    assert token.expires_at == NOW + 60 and token.scope.route == "/v3/ws"
    assert guard.check(read("/api/conversations", text)).reason == "token not valid here"
    with pytest.raises(ValueError, match=r"ttl must be 1\.\.120"):
        guard.issue(121, Scope("demo", route="/v3/ws"))
    with pytest.raises(ValueError, match="route"):
        guard.issue(60, Scope("demo", route="/ws"))
    assert guard.mint(scope=Scope("demo", route="/v3/ws"))["scope"]["route"] == "/v3/ws"


def test_a_phone_stream_token_opens_nothing_here_not_even_its_calls_conversation() -> None:
    """Twilio's stream token travels in TwiML; it is checked in the call's ``start``, nowhere else."""
    guard = locked()
    text, token = guard.issue(60, Scope("demo", "CA123", route="/twilio"))
    assert token.scope.route == "/twilio"
    read_call = Attempt("GET", "/api/conversations/CA123", query_token=text, conversation="CA123")
    assert guard.check(read_call).reason == "token not valid here"
    assert guard.check(Attempt("GET", "/ws", upgrade=True, query_token=text)).reason == "token not valid here"


def test_a_session_token_never_opens_operator_routes_however_sent() -> None:
    guard = locked()
    token = guard.mint()["token"]
    for path in ("/metrics", "/load"):
        for attempt in (read(path, token), read(path, authorization=f"Bearer {token}")):
            assert guard.check(attempt).reason == "API key or scrape key required"


def test_a_scrape_key_elsewhere_is_refused_as_not_valid_here_and_never_in_a_url() -> None:
    guard = locked()
    refused = guard.check(read("/api/conversations", authorization=f"Bearer {SCRAPE_KEY}"))
    assert refused.reason == "key not valid here"
    assert guard.check(read("/metrics", SCRAPE_KEY)).reason == "API key or scrape key required"
    assert guard.check(read("/metrics")).reason == "credentials required"
    assert SCRAPE_KEY not in repr(guard.scrape_keys)


def test_scrape_keys_are_optional() -> None:
    guard = guard_for(ServerSettings(auth="api_key"), "demo", {"VOXGRAPH_API_KEYS": KEY})
    assert not guard.scrape_keys
    assert guard.check(read("/metrics", authorization=f"Bearer {KEY}")).allowed
    assert guard.check(read("/metrics", authorization=f"Bearer {SCRAPE_KEY}")).reason == "invalid API key"
    other = guard_for(
        ServerSettings(auth="api_key", metrics_keys_env="SCRAPE"),
        "demo",
        {"VOXGRAPH_API_KEYS": KEY, "SCRAPE": f" {SCRAPE_KEY} ,", "VOXGRAPH_METRICS_KEYS": "ignored"},
    )
    assert other.check(read("/load", authorization=f"Bearer {SCRAPE_KEY}")).allowed


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "env", "message"),
    [
        ({"host": "0.0.0.0"}, {}, "all interfaces"),
        ({"host": "192.168.1.20"}, {}, "not a loopback address"),
        ({"auth": "api_key"}, {}, "VOXGRAPH_API_KEYS is unset or empty"),
        ({"auth": "api_key", "api_keys_env": "MY_KEYS"}, {"VOXGRAPH_API_KEYS": KEY}, "MY_KEYS is unset"),
        ({"auth": "api_key"}, {"VOXGRAPH_API_KEYS": f"{KEY},tiny7"}, "API key #2 in VOXGRAPH_API_KEYS"),
        ({"auth": "api_key"}, {"VOXGRAPH_API_KEYS": KEY, "VOXGRAPH_TOKEN_SECRET": "x"}, "shorter than 32"),
        (
            {"auth": "api_key"},
            {"VOXGRAPH_API_KEYS": KEY, "VOXGRAPH_METRICS_KEYS": f"{SCRAPE_KEY},tiny7"},
            "scrape key #2 in VOXGRAPH_METRICS_KEYS is too short",
        ),
        (
            {"auth": "api_key"},
            {"VOXGRAPH_API_KEYS": KEY, "VOXGRAPH_METRICS_KEYS": f"{SCRAPE_KEY},{KEY}"},
            "a key in VOXGRAPH_METRICS_KEYS is also in VOXGRAPH_API_KEYS",
        ),
    ],
)
def test_unusable_settings_refuse_to_start(
    settings: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(AuthConfigError, match=message) as raised:
        guard_for(ServerSettings(**settings), "demo", env)  # type: ignore[arg-type]
    for key in ("tiny7", KEY, SCRAPE_KEY):
        assert key not in str(raised.value)  # a key is never quoted


def test_allow_unauthenticated_serves_exposed_but_warns_every_time(caplog: pytest.LogCaptureFixture) -> None:
    settings = ServerSettings(host="0.0.0.0", allow_unauthenticated=True)
    with caplog.at_level(logging.WARNING, "transports.websocket.auth"):
        guard_for(settings, "demo", {})
        guard_for(settings, "demo", {})
    assert [r.getMessage().count("WITHOUT authentication") for r in caplog.records] == [1, 1]
    caplog.clear()
    guard_for(ServerSettings(allow_unauthenticated=True), "demo", {})  # loopback: nothing to warn about
    assert not caplog.records
