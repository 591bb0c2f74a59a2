"""Who may use the server: API keys, short-lived signed session tokens, and Host / Origin checks.

Sans-I/O: ``Guard.check`` takes what a request says (an ``Attempt``) and returns a ``Verdict``; the
aiohttp middleware (``transports.websocket.api.access_middleware``) is a thin layer over it, so every
rule here is tested without sockets.

* **API keys** (``server.auth: api_key``) come from an environment variable (``VOXGRAPH_API_KEYS``,
  comma-separated), are sent as ``Authorization: Bearer KEY`` (on AssemblyAI's routes, ``/v3/ws`` and
  ``/v3/token``, raw as ``Authorization: KEY``, as its SDK sends them) and compared in constant time
  against every key. They are for backends, never for pages: a key is never accepted in a URL.
* **Scrape keys** (``VOXGRAPH_METRICS_KEYS``, optional, same format) open only the operator routes
  ``/metrics`` and ``/load``: a Prometheus server holds one without being able to mint tokens, hold
  conversations or read saved ones. API keys open the operator routes too; session tokens do not (a
  browser has no business there).
* **Session tokens** are minted with a key (``POST /api/session-token``) for a browser or phone:
  ``vxt1.<payload>.<signature>``, the payload compact JSON (id, expiry, optional scope), signed with
  HMAC-SHA256. The secret comes from an environment variable (``VOXGRAPH_TOKEN_SECRET``) so several
  processes can accept each other's tokens, else it is random per process. A token opens ``/ws`` once
  (its id is remembered until it expires) and reads the conversation API until it expires; a token
  scoped to a conversation reads only that conversation. A token scoped to a route (``/v3/token``'s, for
  ``/v3/ws``) opens that socket once and nothing else; ``/ws`` tokens do not open it.
* **OpenAI's routes** (``/v1/...``) take an API key only: each call spends compute, and a page has no
  business there (a browser's token would otherwise make unlimited calls until it expires).
* **Host / Origin**: a Host header must name this server (an IP address, a loopback name, this
  machine's name or ``allowed_hosts``): a DNS-rebinding page sends its own name. An Origin header must
  be the server's own or listed (``allowed_origins``, ``cors_origins`` for the API): a foreign page
  cannot open a conversation in a visitor's browser. Requests without Origin (non-browser clients)
  pass. The page, its static files, ``/health``, the probes ``/livez`` and ``/readyz`` and ``/api/auth`` are
open: they hold no secret.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import ServerSettings
from pipeline.config.server import exposed_without_auth, is_all_interfaces, is_loopback_host
from pipeline.errors import VoxgraphError

log = logging.getLogger("transports.websocket.auth")

TOKEN_PREFIX = "vxt1."
MAX_TOKEN_CHARS = 1024
"""Longer credentials are refused unread: verifying costs work, and ours are ~150 characters."""
MIN_KEY_CHARS = 16
MIN_SECRET_CHARS = 32
MAX_USED_TOKENS = 65536
"""Token ids remembered at once (each until its expiry); when full, new conversations wait."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""What a config name or conversation id in a token's scope may look like."""
LOOPBACK_NAMES = frozenset({"localhost"})
OPEN_PATHS = frozenset({"/", "/health", "/livez", "/readyz", "/api/auth"})
"""Routes anyone may GET: the page, counts and probes (Kubernetes and balancers send no credentials;
``/readyz`` says only whether and why not ready). ``/load`` is not among them: it is for operators."""
CARRIER_PATHS = frozenset({"/twilio/voice", "/twilio", "/telnyx"})
"""Phone carrier routes: they check the carrier's own credentials (a signature, a stream token), since
a carrier sends no API key (``transports.telephony.routes``)."""
RAW_KEY_PATHS = frozenset({"/v3/ws", "/v3/token"})
"""AssemblyAI's streaming routes (``transports.dropin.assemblyai``): its clients send the key, or a
temporary token, raw in ``Authorization: <key>`` (no scheme); browsers send the token in ``?token=``."""
SELF_CHECKED_SOCKETS = frozenset({"/v3/ws"})
"""Sockets whose route asks ``Guard.check_socket`` itself, to refuse credentials its protocol's way
(AssemblyAI's: an ``Error`` message and close code 1008 after the upgrade) rather than with HTTP 401."""
TOKEN_ROUTES = SELF_CHECKED_SOCKETS | {"/twilio"}
"""Routes a token may be minted for alone (``Scope.route``): the self-checked sockets, and Twilio's media
stream, whose route checks the token in the call's ``start`` (``transports.telephony.routes``)."""
OPERATOR_PATHS = frozenset({"/metrics", "/load"})
"""Routes for monitoring: an API key or a scrape key opens them, a session token does not."""
API_PREFIX = "/v1/"
"""OpenAI's routes (``transports.dropin.openai``): an API key only, never a session token."""
CORS_METHODS = "GET, POST"
CORS_HEADERS = "Authorization, Content-Type"


class AuthConfigError(VoxgraphError, ValueError):
    """The server's auth settings or environment cannot be used; the message says how to fix them."""


class TokenError(VoxgraphError):
    """A token was refused; the message is the short reason given to the client."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a token may be used for; None means any."""

    config: str | None = None  # the config (``name:``) served; None: any server sharing the secret
    conversation: str | None = None  # only this conversation's transcript and audio (not ``/ws``)
    route: str | None = None  # only this route (``TOKEN_ROUTES``); None: ``/ws``


@dataclass(frozen=True, slots=True)
class Token:
    """A verified token's claims."""

    id: str  # unique: how a used token is recognised
    expires_at: int  # Unix time, seconds
    scope: Scope


class Signer:
    """Mints and verifies HMAC-SHA256-signed tokens; knows nothing of routes."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret  # never logged, never in repr

    def __repr__(self) -> str:
        return "Signer(***)"

    def mint(self, expires_at: int, scope: Scope) -> tuple[str, Token]:
        """A new token and its claims."""
        token = Token(secrets.token_urlsafe(12), expires_at, scope)
        claims: dict[str, Any] = {"jti": token.id, "exp": expires_at}
        if scope.config is not None:
            claims["cfg"] = scope.config
        if scope.conversation is not None:
            claims["conv"] = scope.conversation
        if scope.route is not None:
            claims["rt"] = scope.route
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{TOKEN_PREFIX}{payload}.{self._sign(payload)}", token

    def verify(self, text: str, now: float) -> Token:
        """The claims of a genuine, unexpired token. Raises ``TokenError`` with a short reason."""
        if len(text) > MAX_TOKEN_CHARS or not text.startswith(TOKEN_PREFIX):
            raise TokenError("invalid token")
        payload, _, signature = text[len(TOKEN_PREFIX) :].partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise TokenError("invalid token")
        try:
            claims = json.loads(_unb64(payload))
            token = Token(_claim(claims, "jti", str), _claim(claims, "exp", int), _scope(claims))
        except (ValueError, TypeError, KeyError):  # signed by us: only a changed format gets here
            raise TokenError("invalid token") from None
        if token.expires_at <= now:
            raise TokenError("token expired")
        return token

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, (TOKEN_PREFIX + payload).encode(), hashlib.sha256)
        return _b64(mac.digest())


def _scope(claims: Mapping[str, Any]) -> Scope:
    config, conversation, route = claims.get("cfg"), claims.get("conv"), claims.get("rt")
    for value in (config, conversation, route):
        if value is not None and not isinstance(value, str):
            raise TypeError("scope values are strings")
    return Scope(config, conversation, route)


def _claim(claims: Any, key: str, kind: type[Any]) -> Any:
    value = claims[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"claim {key} is not {kind.__name__}")
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UsedTokens:
    """Ids of tokens already used for a conversation, each kept until its token expires (bounded)."""

    def __init__(self, limit: int = MAX_USED_TOKENS) -> None:
        self.limit = limit
        self._ids: set[str] = set()
        self._expiries: list[tuple[int, str]] = []  # a heap: the next to forget first

    def __len__(self) -> int:
        return len(self._ids)

    def use(self, token: Token, now: float) -> bool:
        """Mark ``token`` used; False if it was already. Raises ``OverflowError`` when full."""
        while self._expiries and self._expiries[0][0] <= now:
            self._ids.discard(heapq.heappop(self._expiries)[1])
        if token.id in self._ids:
            return False
        if len(self._ids) >= self.limit:  # forgetting an unexpired id would let it be replayed
            raise OverflowError("too many unexpired tokens in use")
        self._ids.add(token.id)
        heapq.heappush(self._expiries, (token.expires_at, token.id))
        return True


class Keys:
    """API keys (or scrape keys); ``matches`` compares against every key in constant time."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [_digest(key) for key in keys]  # equal lengths: not even a key's length leaks

    def __repr__(self) -> str:
        return f"Keys({len(self._digests)} keys)"

    def __bool__(self) -> bool:
        return bool(self._digests)

    def matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is one of the keys (every key is compared, whatever matches)."""
        given = _digest(candidate)
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(digest, given)
        return found

    def shares_a_key(self, other: Keys) -> bool:
        """Whether a key is in both (a configuration check: not constant-time)."""
        return not set(self._digests).isdisjoint(other._digests)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Route(enum.Enum):
    """What a request asks for, as far as access goes."""

    OPEN = "open"  # the page, static files, /health, /livez, /readyz, /api/auth
    SOCKET = "socket"  # /ws, or a websocket upgrade of /
    MINT = "mint"  # POST /api/session-token, GET /v3/token: an API key only
    API = "api"  # /v1/...: OpenAI's routes, an API key only
    OPERATOR = "operator"  # GET /metrics, /load: an API key or a scrape key, never a session token
    CARRIER = "carrier"  # /twilio/voice, /twilio, /telnyx: the route checks the carrier's credentials
    SELF_CHECKED = "self_checked"  # /v3/ws: the route calls ``Guard.check_socket`` and answers refusals
    READ = "read"  # every other route: the conversation API (and unknown paths)


def classify(method: str, path: str, upgrade: bool) -> Route:
    """The route class of a request; anything not known to be open needs credentials."""
    if path == "/ws" or (path == "/" and upgrade):
        return Route.SOCKET
    if path in CARRIER_PATHS:
        return Route.CARRIER
    if path in SELF_CHECKED_SOCKETS:
        return Route.SELF_CHECKED
    get = method in ("GET", "HEAD") and not upgrade
    if get and (path in OPEN_PATHS or path.startswith("/static/")):
        return Route.OPEN
    if get and path in OPERATOR_PATHS:
        return Route.OPERATOR
    if path in ("/api/session-token", "/v3/token"):
        return Route.MINT
    if path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/"):
        return Route.API
    return Route.READ


@dataclass(frozen=True, slots=True)
class Attempt:
    """What a request says, as far as access goes (headers as sent; None when absent)."""

    method: str
    path: str
    host: str | None = None
    origin: str | None = None
    authorization: str | None = None
    query_token: str | None = None  # ``?token=``: session tokens only, never API keys
    upgrade: bool = False  # a websocket upgrade
    conversation: str | None = None  # the conversation id the route names, if any
    preflight: str | None = None  # Access-Control-Request-Method of an OPTIONS request


@dataclass(frozen=True, slots=True)
class Verdict:
    """200: go on (adding ``headers``); 204: a CORS preflight answered; 401, 403, 503: refused."""

    status: int
    reason: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.status == 200


@dataclass(frozen=True, slots=True)
class Policy:
    """Which Host names and Origins are this server's own (the lists are lower-case and normalised)."""

    hosts: frozenset[str] = LOOPBACK_NAMES  # exact names; ``.example.com`` entries allow subdomains
    origins: frozenset[str] = frozenset()  # may open /ws and call the API from a browser
    cors: frozenset[str] = frozenset()  # may call the API from a browser, with CORS headers

    def host_allowed(self, header: str | None) -> bool:
        """An IP address (DNS rebinding needs a name), or one of ours. No Host: not a browser."""
        if header is None:
            return True
        name = host_name(header)
        if name is None:
            return False
        if _is_ip(name) or name in self.hosts:
            return True
        return any(entry.startswith(".") and name.endswith(entry) for entry in self.hosts)

    def origin_allowed(self, origin: str, host: str | None, api: bool) -> bool:
        """The page's own origin (same host and port as the request), or a listed one."""
        normal = normal_origin(origin)
        if normal is None:
            return False  # "null" (a sandboxed frame, a file) or garbage
        if host is not None and _netloc(normal) == _default_port_dropped(host.lower(), None):
            return True
        return normal in self.origins or (api and normal in self.cors)


class Guard:
    """Decides every request: Host, Origin, CORS preflight, then credentials for the route."""

    def __init__(
        self,
        policy: Policy,
        *,
        keys: Keys | None = None,
        scrape_keys: Keys | None = None,
        signer: Signer | None = None,
        config_name: str | None = None,
        token_ttl: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.keys = keys  # None: auth is off, only Host and Origin are checked
        self.scrape_keys = scrape_keys or Keys([])  # open the operator routes only
        self.signer = signer or Signer(secrets.token_bytes(32))
        self.config_name = config_name  # the served config: tokens scoped to another are refused
        self.token_ttl = token_ttl  # the longest lifetime a minted token may ask for
        self.clock = clock
        self.used = UsedTokens()

    @property
    def enabled(self) -> bool:
        """Whether credentials are required (``server.auth`` is not ``none``)."""
        return self.keys is not None

    def check(self, attempt: Attempt) -> Verdict:
        """Whether the request may go on. A ``/ws`` token is used up by a successful check."""
        route = classify(attempt.method, attempt.path, attempt.upgrade)
        if route in (Route.OPEN, Route.CARRIER, Route.SELF_CHECKED):
            return Verdict(200)
        return self._decide(route, attempt)

    def check_socket(self, attempt: Attempt) -> Verdict:
        """``check`` for a socket route that answers refusals itself (``SELF_CHECKED_SOCKETS``): Host,
        Origin and credentials as for ``/ws``. A token is used up by a successful check."""
        return self._decide(Route.SOCKET, attempt)

    def _decide(self, route: Route, attempt: Attempt) -> Verdict:
        if not self.policy.host_allowed(attempt.host):
            return Verdict(403, "host not allowed")
        api = route is not Route.SOCKET
        origin = attempt.origin
        if origin is not None and not self.policy.origin_allowed(origin, attempt.host, api):
            return Verdict(403, "origin not allowed")
        cors = self._cors(origin) if api else {}
        if attempt.method == "OPTIONS" and attempt.preflight is not None:
            return self._preflight(attempt.preflight, cors)
        if self.keys is None:
            return Verdict(200, headers=cors)
        reason = self._credentials(route, attempt)
        if reason is None:
            return Verdict(200, headers=cors)
        status = 503 if reason.startswith("too many") else 401
        return Verdict(status, reason, {**cors, "WWW-Authenticate": "Bearer"} if status == 401 else cors)

    def mint(self, ttl: int | None = None, scope: Scope | None = None) -> dict[str, Any]:
        """A new session token as ``POST /api/session-token`` returns it (``scope.route`` named only when
        set). Raises ``ValueError``."""
        ttl = self.token_ttl if ttl is None else ttl
        text, token = self.issue(ttl, scope)
        named: dict[str, Any] = {"config": token.scope.config, "conversation": token.scope.conversation}
        if token.scope.route is not None:
            named["route"] = token.scope.route
        return {"token": text, "expires_at": token.expires_at, "expires_in": ttl, "scope": named}

    def issue(self, ttl: int, scope: Scope | None = None) -> tuple[str, Token]:
        """A new token and its claims: how every token is minted (``ttl`` at most ``token_ttl``, the
        scope's names checked; ``scope`` None: this config's). Raises ``ValueError``."""
        if not 1 <= ttl <= self.token_ttl:
            raise ValueError(f"ttl must be 1..{self.token_ttl} seconds (server.token_ttl)")
        scope = scope if scope is not None else Scope(self.config_name)
        for value in (scope.config, scope.conversation):
            if value is not None and not NAME.fullmatch(value):
                raise ValueError("config and conversation are names: letters, digits, '_', '-', '.'")
        if scope.route is not None and scope.route not in TOKEN_ROUTES:
            raise ValueError(f"a token's route is one of {sorted(TOKEN_ROUTES)}")
        return self.signer.mint(int(self.clock()) + ttl, scope)

    def _credentials(self, route: Route, attempt: Attempt) -> str | None:
        """None if the credentials sent allow the route, else the short reason for the 401."""
        assert self.keys is not None
        sent = sent_credential(attempt)
        if sent is not None and not sent.startswith(TOKEN_PREFIX):
            return self._key(route, sent)
        if route in (Route.MINT, Route.API):
            return "API key required"
        text = sent if sent is not None else attempt.query_token
        if text is None:
            return "credentials required"
        if route is Route.OPERATOR:
            return "API key or scrape key required"  # a session token: a browser has no business here
        now = self.clock()
        try:
            token = self.signer.verify(text, now)
        except TokenError as error:
            return str(error)
        scope = token.scope
        if scope.config is not None and scope.config != self.config_name:
            return "token not valid here"
        socket_route = attempt.path if attempt.path in SELF_CHECKED_SOCKETS else None
        if scope.route != (socket_route if route is Route.SOCKET else None):
            return "token not valid here"
        if route is Route.SOCKET:
            if scope.conversation is not None:
                return "token not valid here"
            try:
                fresh = self.used.use(token, now)
            except OverflowError:
                log.warning("%d unexpired tokens already used: refusing new conversations", len(self.used))
                return "too many recent conversations; try again later"
            return None if fresh else "token already used"
        if scope.conversation is not None and scope.conversation != attempt.conversation:
            return "token not valid here"
        return None

    def _key(self, route: Route, sent: str) -> str | None:
        """None if the key sent opens the route. Both lists are compared in full, whatever matches."""
        assert self.keys is not None
        api, scrape = self.keys.matches(sent), self.scrape_keys.matches(sent)
        if api or (scrape and route is Route.OPERATOR):
            return None
        return "key not valid here" if scrape else "invalid API key"

    def _cors(self, origin: str | None) -> dict[str, str]:
        normal = normal_origin(origin) if origin is not None else None
        if normal is None or normal not in self.policy.cors:
            return {}
        return {"Access-Control-Allow-Origin": origin or "", "Vary": "Origin"}

    def _preflight(self, method: str, cors: Mapping[str, str]) -> Verdict:
        if not cors or method.upper() not in ("GET", "POST"):
            return Verdict(403, "cross-origin request not allowed")
        headers = {
            **cors,
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Max-Age": "600",
        }
        return Verdict(204, headers=headers)


def sent_credential(attempt: Attempt) -> str | None:
    """The credential in ``Authorization``: a Bearer one, or on ``RAW_KEY_PATHS`` the header as sent.
    ("" for an ``Authorization`` of another scheme; None without one: then look at ``?token=``.)"""
    header = attempt.authorization
    if header is not None and attempt.path in RAW_KEY_PATHS and not header.lower().startswith("bearer "):
        return header.strip()
    return _bearer(header)


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else ""


def host_name(header: str) -> str | None:
    """The name in a Host header, lower-case, without port or trailing dot (None if malformed)."""
    text = header.strip().lower()
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            return None
        return name
    name, _, port = text.partition(":")
    if (port and not port.isdigit()) or not name:
        return None
    return name.rstrip(".")


def normal_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` lower-case with the default port dropped, or None if not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = _default_port_dropped(f"{host}:{port}" if port is not None else host, parts.scheme)
    return f"{parts.scheme}://{netloc}"


def _netloc(origin: str) -> str:
    return origin.partition("://")[2]


def _default_port_dropped(netloc: str, scheme: str | None) -> str:
    """``host:80`` for http (``:443`` for https) is ``host``; without a scheme both are dropped."""
    for default_scheme, port in (("http", ":80"), ("https", ":443")):
        if netloc.endswith(port) and scheme in (None, default_scheme):
            return netloc[: -len(port)]
    return netloc


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def policy_for(settings: ServerSettings) -> Policy:
    """The Host and Origin lists: loopback names, this machine's names when exposed, and the settings'."""
    hosts = set(LOOPBACK_NAMES)
    if not is_loopback_host(settings.host):
        if not is_all_interfaces(settings.host):
            hosts.add(settings.host.lower())
        machine = socket.gethostname().lower()  # no DNS: the name this machine calls itself
        if machine:
            short = machine.split(".")[0]
            hosts.update({machine, short, f"{short}.local"})
    hosts.update(entry.lower().rstrip(".") for entry in settings.allowed_hosts)
    origins = {normal_origin(o) for o in settings.allowed_origins}
    cors = {normal_origin(o) for o in settings.cors_origins}
    return Policy(
        frozenset(hosts),
        frozenset(o for o in origins if o is not None),
        frozenset(o for o in cors if o is not None),
    )


def guard_for(
    settings: ServerSettings,
    config_name: str | None,
    env: Mapping[str, str],
    clock: Callable[[], float] = time.time,
) -> Guard:
    """The guard for ``settings``: keys and secret read from ``env``.

    Raises ``AuthConfigError`` when the server must not start: exposed without auth (and without
    ``allow_unauthenticated``), or ``api_key`` without usable API keys, with a malformed scrape key or
    one that is also an API key, or with a short shared secret.
    """
    policy = policy_for(settings)
    ttl = int(settings.token_ttl)
    if settings.auth == "none":
        exposure = exposed_without_auth(settings)
        if exposure is not None:
            raise AuthConfigError(f"{exposure[0]}: {exposure[1]}")
        if not is_loopback_host(settings.host):
            log.warning(
                "serving %s WITHOUT authentication (server.allow_unauthenticated: true): anyone who can "
                "reach it can hold conversations and read saved ones; set server.auth: api_key",
                "all interfaces" if is_all_interfaces(settings.host) else settings.host,
            )
        return Guard(policy, config_name=config_name, token_ttl=ttl, clock=clock)
    keys = read_keys(settings.api_keys_env, env)
    scrape_keys = read_keys(settings.metrics_keys_env, env, kind="scrape key", required=False)
    if keys.shares_a_key(scrape_keys):
        raise AuthConfigError(
            f"a key in {settings.metrics_keys_env} is also in {settings.api_keys_env}: a scrape key must "
            "open only /metrics and /load, so give Prometheus its own key"
        )
    secret = env.get(settings.token_secret_env, "")
    if secret and len(secret) < MIN_SECRET_CHARS:
        raise AuthConfigError(
            f"{settings.token_secret_env} is shorter than {MIN_SECRET_CHARS} characters: set a long random "
            f"value (python -c 'import secrets; print(secrets.token_urlsafe(32))'), or unset it for a "
            "per-process secret"
        )
    signer = Signer(secret.encode() if secret else secrets.token_bytes(32))
    return Guard(
        policy,
        keys=keys,
        scrape_keys=scrape_keys,
        signer=signer,
        config_name=config_name,
        token_ttl=ttl,
        clock=clock,
    )


def read_keys(variable: str, env: Mapping[str, str], *, kind: str = "API key", required: bool = True) -> Keys:
    """The comma-separated keys in ``env[variable]``. Raises ``AuthConfigError`` (never quoting a key).

    Args:
        kind: what the keys are, for messages.
        required: whether an unset or empty variable is an error (else: no keys).
    """
    keys = [key.strip() for key in env.get(variable, "").split(",") if key.strip()]
    make = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if not keys and required:
        raise AuthConfigError(
            f"server.auth is api_key but {variable} is unset or empty: set it to one or more "
            f"comma-separated {kind}s (make one with {make})"
        )
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_CHARS or key.startswith(TOKEN_PREFIX) or not key.isprintable():
            raise AuthConfigError(
                f"{kind} #{number} in {variable} is too short or malformed: use at least {MIN_KEY_CHARS} "
                f"printable characters, not starting with '{TOKEN_PREFIX}' (make one with {make})"
            )
    return Keys(keys)
