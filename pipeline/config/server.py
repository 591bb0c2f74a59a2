"""The ``server:`` section: its settings, checked with the rest of the config, and the server types.

A served config is validated once, at start; ``pipeline.config.sessions`` then builds one graph per
connection and ``pipeline.config.connections`` checks the nodes that talk to it.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import typing
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, cast

from pipeline.config.spec import GraphSpec, ServerSettings
from pipeline.errors import Problem
from pipeline.params import convert, did_you_mean, type_name

if TYPE_CHECKING:
    from pipeline.config.build import Compiled

SERVERS: dict[str, str] = {"websocket": "transports.websocket.server:serve"}
"""Server type -> ``module:function`` serving a compiled config (imported only when it runs)."""

Serve = Callable[["Compiled"], Coroutine[Any, Any, int]]


def read_server(spec: GraphSpec) -> tuple[ServerSettings | None, list[Problem]]:
    """The valid ``server:`` settings (None without a section); bad values are reported, keep defaults."""
    if spec.server is None:
        return None, []
    hints = typing.get_type_hints(ServerSettings)
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in spec.server.items():
        converted, problem = _server_value(key, value, hints, spec.interpolated.get(f"server.{key}"))
        if problem is None:
            values[key] = converted
            continue
        problems.append(_located(problem, spec, f"server.{key}"))
    settings = ServerSettings(**values)
    exposure = exposed_without_auth(settings, spec.interpolated.get("server.host"))
    if exposure is not None and not any(p.key in ("host", "auth", "allow_unauthenticated") for p in problems):
        message, fix = exposure
        problems.append(_located(Problem(message, fix=fix, key="host"), spec, "server.host"))
    return settings, problems


def _located(problem: Problem, spec: GraphSpec, path: str) -> Problem:
    if path in spec.overridden:
        problem.file = f"--set {path}"
    else:
        problem.file, problem.line = spec.file, spec.lines.get(path, spec.lines.get("server"))
    return problem


AUTH_MODES = ("none", "api_key")
FULL_REFUSALS = ("message", "http")
ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
HOST_ENTRY = re.compile(r"\.?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
PORT_RANGE = re.compile(r"[0-9]{4,5}-[0-9]{4,5}")
ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)(:[0-9]{1,5})?/?")


def is_all_interfaces(host: str) -> bool:
    """Whether ``host`` binds every interface (``0.0.0.0``, ``::``)."""
    return host.strip().strip("[]") in ALL_INTERFACES


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` binds only this machine: ``localhost`` or a loopback address (names other than
    ``localhost`` count as exposed: resolving them here would block, and they may change)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposed_without_auth(settings: ServerSettings, interpolated: str | None = None) -> tuple[str, str] | None:
    """(why, fix) when the server would listen beyond this machine with no auth nor an explicit opt-out."""
    if settings.auth != "none" or settings.allow_unauthenticated or is_loopback_host(settings.host):
        return None
    shown = f"a value from {interpolated}" if interpolated else repr(settings.host)
    where = "all interfaces" if is_all_interfaces(settings.host) else "not a loopback address"
    message = (
        f"server host {shown} ({where}) without auth: anyone who can reach it could hold "
        "conversations and read saved ones"
    )
    fix = (
        f"set server.auth: api_key (keys in ${settings.api_keys_env}), or host: 127.0.0.1, "
        "or allow_unauthenticated: true if something in front of it authenticates"
    )
    return message, fix


_LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "type": (lambda v: v in SERVERS, "use one of: " + ", ".join(SERVERS)),
    "port": (lambda v: 0 <= v <= 65535, "use 0..65535 (0: any free port)"),
    "max_sessions": (lambda v: v >= 1, "use 1 or more"),
    "full_refusal": (
        lambda v: v in FULL_REFUSALS,
        "use message (an error message, close 1013) or http (HTTP 503 before the upgrade, for a balancer)",
    ),
    "max_message_bytes": (lambda v: v >= 1024, "use at least 1024 (audio chunks are 640 bytes)"),
    "idle_timeout": (lambda v: v >= 0, "use seconds, e.g. 120 (0: never end an idle conversation)"),
    "drain_timeout": (
        lambda v: 0 <= v <= 3600,
        "use seconds, 0..3600, e.g. 300 (0: stop conversations at once)",
    ),
    "header_timeout": (lambda v: v >= 0, "use seconds, e.g. 10 (0: no deadline)"),
    "keepalive_timeout": (lambda v: v > 0, "use seconds, e.g. 15"),
    "max_connections": (lambda v: v >= 0, "use a number, e.g. 500 (0: from the open-files limit)"),
    "send_timeout": (lambda v: v >= 0, "use seconds, e.g. 30 (0: the system's default)"),
    "auth": (lambda v: v in AUTH_MODES, "use none (loopback hosts only) or api_key"),
    "token_ttl": (lambda v: 10 <= v <= 3600, "use seconds, 10..3600, e.g. 300"),
    "api_keys_env": (lambda v: bool(ENV_NAME.fullmatch(v)), "use an environment variable name"),
    "metrics_keys_env": (lambda v: bool(ENV_NAME.fullmatch(v)), "use an environment variable name"),
    "token_secret_env": (lambda v: bool(ENV_NAME.fullmatch(v)), "use an environment variable name"),
    "allowed_hosts": (
        lambda v: all(HOST_ENTRY.fullmatch(h) for h in v),
        "use host names, e.g. [voice.example.com]; a leading dot allows subdomains: [.example.com]",
    ),
    "allowed_origins": (
        lambda v: all(ORIGIN.fullmatch(o) for o in v),
        "use origins, scheme://host[:port] without a path, e.g. [https://app.example.com]",
    ),
    "cors_origins": (
        lambda v: all(ORIGIN.fullmatch(o) for o in v),
        "use origins, scheme://host[:port] without a path, e.g. [https://app.example.com]",
    ),
    "max_cpu": (lambda v: 0 < v <= 1, "use a fraction of all cores, e.g. 0.85"),
    "max_loop_lag": (lambda v: v > 0, "use seconds, e.g. 0.25"),
    "max_session_lag": (lambda v: v > 0, "use seconds, e.g. 2"),
    "load_window": (lambda v: v >= 1, "use seconds, e.g. 10"),
    "ice_servers": (
        lambda v: all(re.fullmatch(r"(stun|turns?):[^\s]+", u) for u in v),
        "use STUN/TURN URLs, e.g. [stun:stun.example.com:3478, turn:turn.example.com:3478]",
    ),
    "ice_username_env": (lambda v: bool(ENV_NAME.fullmatch(v)), "use an environment variable name"),
    "ice_credential_env": (lambda v: bool(ENV_NAME.fullmatch(v)), "use an environment variable name"),
    "rtc_ports": (
        lambda v: (
            v == ""
            or (
                bool(PORT_RANGE.fullmatch(v))
                and 1024 <= int(v.split("-")[0]) <= int(v.split("-")[1]) <= 65535
            )
        ),
        "use a UDP port range first-last, e.g. 50000-50199 (empty: any port)",
    ),
}
"""Server key -> (is the converted value usable, how to fix it)."""


def _server_value(
    key: str, value: Any, hints: Mapping[str, Any], interpolated: str | None
) -> tuple[Any, Problem | None]:
    if key not in hints:
        guess = did_you_mean(key, list(hints))
        fix = f"did you mean '{guess}'?" if guess else "server keys are: " + ", ".join(hints)
        return None, Problem(f"unknown server key '{key}'", fix=fix, key=key)
    converted, expected = convert(value, hints[key])
    shown = f"a value from {interpolated}" if interpolated else repr(value)
    if expected:
        message = f"server {key} expects {type_name(hints[key])}, got {shown}"
        return None, Problem(message, fix=f"set {key} to {expected}", key=key)
    usable, fix = _LIMITS.get(key, (lambda v: True, ""))
    if key == "type" and not usable(converted):
        guess = did_you_mean(str(converted), list(SERVERS))
        return None, Problem(
            f"unknown server type {shown}", fix=f"did you mean '{guess}'?" if guess else fix, key=key
        )
    if not usable(converted):
        return None, Problem(f"server {key} {shown} is out of range", fix=fix, key=key)
    return converted, None


def server_entry(kind: str) -> Serve:
    """The function serving configs of server type ``kind``."""
    module_name, _, function = SERVERS[kind].partition(":")
    return cast(Serve, getattr(importlib.import_module(module_name), function))
