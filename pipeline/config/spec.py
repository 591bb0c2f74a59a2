"""What a config says, before anything is built: nodes, edges and settings, with the line of every key.

Reading the YAML produces a ``GraphSpec``, ``--set`` overrides edit it, and building turns it into
processors. The lines travel with the values so that every later stage can report a problem where the
user wrote it, and the interpolation records let messages name ``${VAR}`` instead of showing its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.graph import Edge


@dataclass(slots=True)
class Settings:
    """Graph-wide settings (``settings:`` in YAML)."""

    auto_resample: bool = False
    """Insert ``audio.resample`` nodes where a consumer cannot take the audio it is given."""
    start_timeout: float = 300.0
    """Seconds all ``on_start`` hooks together may take."""
    end_timeout: float = 10.0
    """Seconds ``Graph.stop()`` lets the end drain before cancelling."""
    cancel_timeout: float = 5.0
    """Seconds each processor gets to stop when the graph is cancelled."""


@dataclass(slots=True)
class ServerSettings:
    """How to serve the graph (``server:`` in YAML): one new graph per connection, built from the config."""

    type: str = "websocket"
    """Which server: ``websocket`` (a browser page and a websocket per conversation)."""
    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` exposes it to the network)."""
    port: int = 8000
    """TCP port; 0 picks a free one (the URL printed at start names it)."""
    max_sessions: int = 4
    """Conversations at once (each runs its own graph); more connections are refused."""
    full_refusal: str = "message"
    """How a full server refuses a conversation: ``message`` (upgrade, then an ``error`` message and close
    1013, which a page shows) or ``http`` (HTTP 503 with ``Retry-After`` before the upgrade, as while
    draining, so a load balancer retries it on another worker)."""
    max_message_bytes: int = 1048576
    """Largest client message taken; a larger one gets an error reply."""
    recordings: str | None = None
    """Directory of saved conversations for the API; default: the recorder node's directory."""
    idle_timeout: float = 120.0
    """Seconds without a client message before a conversation ends (its slot freed); 0: never."""
    drain_timeout: float = 300.0
    """Seconds live conversations may go on after SIGTERM (or a first Ctrl-C) while no new one starts;
    those still running then are stopped (drained, saved) and closed with 1001. 0: stop them at once."""
    header_timeout: float = 10.0
    """Seconds a new connection has to send its first request line and headers (a websocket upgrade
    too); 0: no deadline."""
    keepalive_timeout: float = 15.0
    """Seconds an HTTP connection may wait idle for its next request."""
    max_connections: int = 0
    """Open TCP connections at most; 0: from the open-files limit (raised to the hard limit at start),
    leaving room for everything else. At the cap the oldest connection without a request is closed."""
    send_timeout: float = 30.0
    """Seconds data sent to a client may stay unacknowledged (a client that stopped reading, or vanished)
    before its connection is dropped; 0: the system's default (Linux)."""
    tls_cert: str | None = None
    """PEM certificate (chain) file: serve HTTPS and WSS (with ``tls_key``); the TLS handshake must end
    within ``header_timeout``."""
    tls_key: str | None = None
    """PEM private key file of ``tls_cert``."""
    auth: str = "none"
    """``none`` (loopback hosts only) or ``api_key``: API keys, and session tokens minted with one."""
    allow_unauthenticated: bool = False
    """Serve a non-loopback host with ``auth: none`` anyway (something in front authenticates)."""
    api_keys_env: str = "VOXGRAPH_API_KEYS"
    """Environment variable holding the API keys, comma-separated."""
    metrics_keys_env: str = "VOXGRAPH_METRICS_KEYS"
    """Environment variable holding scrape keys, comma-separated: they open only ``/metrics`` and ``/load``
    (for Prometheus); unset or empty: none."""
    token_secret_env: str = "VOXGRAPH_TOKEN_SECRET"
    """Environment variable holding the token signing secret; unset: random per process."""
    token_ttl: int = 300
    """Seconds a session token lives (the longest a mint request may ask for)."""
    allowed_hosts: list[str] = field(default_factory=list)
    """Host names accepted besides IP addresses, loopback names and (when exposed) this machine's."""
    allowed_origins: list[str] = field(default_factory=list)
    """Browser origins besides the page's own that may open ``/ws`` and call the API."""
    cors_origins: list[str] = field(default_factory=list)
    """Browser origins that may call the API cross-origin (CORS headers, preflight answered)."""
    max_cpu: float = 0.85
    """Admission: fraction of all cores the server may use (over ``load_window``, now or with one more
    session) before new conversations are refused; ``max_sessions`` stays the hard cap."""
    max_loop_lag: float = 0.25
    """Admission: seconds the event loop may run late before new conversations are refused."""
    max_session_lag: float = 2.0
    """Admission: seconds a conversation may fall behind (its live audio, or its first turns' latency)
    before new ones are refused."""
    load_window: float = 10.0
    """Seconds of history behind the CPU and loop-lag figures."""
    ice_servers: list[str] = field(default_factory=list)
    """WebRTC: STUN/TURN URLs for peer connections (``stun:host:3478``, ``turn:host:3478?transport=udp``);
    none by default, so nothing is asked of a third party. aiortc uses the first of each kind."""
    ice_username_env: str = "VOXGRAPH_TURN_USERNAME"
    """WebRTC: environment variable holding the TURN username."""
    ice_credential_env: str = "VOXGRAPH_TURN_CREDENTIAL"
    """WebRTC: environment variable holding the TURN password."""
    rtc_ports: str = ""
    """WebRTC: UDP ports for peer connections, ``first-last`` (e.g. ``50000-50199``, one per session);
    empty: any ephemeral port."""


@dataclass(slots=True)
class NodeSpec:
    """One node as written: type, raw param values, and where each key is (for messages)."""

    name: str
    type: str | None = None
    params: dict[str, Any] = field(default_factory=dict, repr=False)
    """Param values as written, interpolated (may hold secrets: left out of ``repr``)."""
    queue: Any = None
    """The ``queue:`` value as written (checked when the graph is built)."""
    line: int | None = None
    """Line of the node's name."""
    lines: dict[str, int] = field(default_factory=dict)
    """Line of each key: ``type``, ``queue``, ``queue.size``, param names."""
    interpolated: dict[str, str] = field(default_factory=dict)
    """Key -> the ``${...}`` references its value came from (the value itself is never shown)."""
    substituted: dict[str, str] = field(default_factory=dict, repr=False)
    """Key -> substituted text, for values that were exactly one ``${...}`` (typed re-parse fallback)."""
    overridden: set[str] = field(default_factory=set)
    """Keys set by ``--set``."""

    def line_of(self, key: str | None) -> int | None:
        """Where to report a problem with ``key``: its line, else the ``type:`` line, else the node's."""
        if key is not None and key in self.lines:
            return self.lines[key]
        return self.lines.get("type", self.line)


@dataclass(slots=True)
class GraphSpec:
    """A parsed, interpolated, line-annotated config; ``check`` and ``load`` turn it into a graph."""

    name: str
    file: str
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    """Raw ``settings:`` values (checked when the graph is built)."""
    server: dict[str, Any] | None = None
    """Raw ``server:`` values, None when the config has no ``server:`` (checked when it is built)."""
    plugins: list[str] = field(default_factory=list)
    """Modules to import before types are resolved (``plugins:``): they ``@register`` node types."""
    nodes: dict[str, NodeSpec] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    edge_lines: list[int | None] = field(default_factory=list)
    """Line of each edge, parallel to ``edges``."""
    lines: dict[str, int] = field(default_factory=dict)
    """Line of each top-level key, of each ``settings.<key>`` and each ``server.<key>``."""
    interpolated: dict[str, str] = field(default_factory=dict)
    """``settings.<key>`` / ``server.<key>`` -> the ``${...}`` references its value came from."""
    overridden: set[str] = field(default_factory=set)
    """``settings.<key>`` / ``server.<key>`` set by ``--set``."""
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Sensitive text -> what to show instead (substituted environment values, secret params)."""
