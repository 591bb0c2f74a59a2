"""Load a graph from YAML, checking everything before anything runs and reporting every problem at once.

Reference::

    name: transcribe-file          # optional; default: the file name without extension
    description: "..."             # optional; shown by the CLI
    settings:                      # optional
      auto_resample: false         # insert audio.resample nodes where audio formats differ
      start_timeout: 300.0         # seconds every on_start together may take (model loading)
      end_timeout: 10.0            # seconds stop() lets the end drain before cancelling
      cancel_timeout: 5.0          # seconds each processor gets to stop when cancelled
    server:                        # optional: serve the graph, one new graph per connection
      type: websocket              #   a browser page on http://host:port/ and a websocket per conversation
      host: 127.0.0.1
      port: 8000                   #   0 picks a free port
      max_sessions: 4              #   conversations at once; more connections are refused
      max_message_bytes: 1048576   #   larger client messages get an error reply
      idle_timeout: 120            #   seconds without a client message before a conversation ends
      recordings: recordings       #   what /api/conversations lists; default: the recorder's directory
      auth: none                   #   none (loopback hosts only) or api_key (README: Access)
      allow_unauthenticated: false #   true: serve a non-loopback host with auth none anyway (warns)
      api_keys_env: VOXGRAPH_API_KEYS        # API keys, comma-separated (Authorization: Bearer KEY)
      metrics_keys_env: VOXGRAPH_METRICS_KEYS  # scrape keys: only /metrics and /load; unset: none
      token_secret_env: VOXGRAPH_TOKEN_SECRET  # token signing secret; unset: random per process
      token_ttl: 300               #   seconds a session token lives at most (10..3600)
      allowed_hosts: []            #   Host names besides IPs, localhost, this machine's (.x.com: subdomains)
      allowed_origins: []          #   other pages that may open /ws and call the API
      cors_origins: []             #   other pages that may read the API cross-origin (CORS)
    nodes:                         # required: node name -> node
      src: {type: source.tone, frequency: 440, duration: 1.0}
      vad:
        type: vad.webrtc           # required: a registered type or an import path 'package.module:Class'
        aggressiveness: 2          # every other key is a param of the type, checked against its Params
        queue:                     # optional: the node's inbox
          size: 32                 #   bound in frames (>= 1); default: the type's queue_size
          overflow: drop_oldest    #   block (backpressure) or drop_oldest (live audio)
      out: {type: debug.print}
    edges:                         # frames flow along these, downstream
      - src -> vad -> out          # a chain is one edge per arrow
      - [src, out]                 # or a two-item list
                                   # fan-out / fan-in: name a node in several edges

Node names use letters, digits, ``_`` and ``-``. ``type`` and ``queue`` are reserved keys, not params.

Environment variables: every string *value* (not keys, not edges) may use ``${VAR}``, ``${VAR:-default}``
(used when ``VAR`` is unset or empty), and ``$$`` for a literal ``$``. A value that is exactly one
``${...}`` is read as a YAML scalar once substituted, so ``port: ${PORT:-8000}`` is the number 8000
(a param typed ``str`` still gets the text). In a flow mapping (``{...}``) quote it:
``{port: "${PORT:-8000}"}``. Substituted values and ``secret`` params never appear in messages.

Overrides (``--set``): ``node.param=value``, ``node.queue.size=value``, ``node.type=value`` or
``settings.key=value``; the value is read as a YAML scalar (``--set vad.aggressiveness=3`` is the int 3)
or a flow list (``--set out.kinds=[transcript,llm_text]``). Overrides are checked like the file's values;
``settings.`` always means the settings and ``server.`` the server section (``--set server.port=0``),
so nodes named ``settings`` or ``server`` cannot be overridden.

Mappings may use YAML anchors and merge keys (``<<: *base``) to share settings between nodes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline import secrets
from pipeline.config.build import QUEUE_KEYS, Compiled, build
from pipeline.config.interpolate import hide_secrets
from pipeline.config.overrides import apply_overrides
from pipeline.config.server import server_entry
from pipeline.config.sessions import session_graph
from pipeline.config.spec import GraphSpec, NodeSpec, ServerSettings, Settings
from pipeline.config.spec_reader import EDGE_FIX, NODE_NAME, TOP_LEVEL_KEYS, read_spec
from pipeline.config.yaml_reader import parse_scalar
from pipeline.errors import Problem, ValidationError
from pipeline.graph import Graph

__all__ = [
    "EDGE_FIX",
    "NODE_NAME",
    "QUEUE_KEYS",
    "TOP_LEVEL_KEYS",
    "Compiled",
    "GraphSpec",
    "NodeSpec",
    "ServerSettings",
    "Settings",
    "check",
    "check_text",
    "compile_config",
    "compile_text",
    "load",
    "load_text",
    "parse",
    "parse_scalar",
    "parse_text",
    "server_entry",
    "session_graph",
]


def load(path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Graph:
    """Build a ready-to-run graph from a YAML file; raises ``ValidationError`` listing every problem."""
    return _loaded(*compile_config(path, overrides, env))


def load_text(
    text: str, filename: str = "<config>", overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Graph:
    """Like ``load``, from YAML text; ``filename`` is what messages call it."""
    return _loaded(*compile_text(text, filename, overrides, env))


def check(
    path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every problem of a config file ([] when it is valid). Never raises for a bad config."""
    return compile_config(path, overrides, env)[1]


def check_text(
    text: str, filename: str = "<config>", overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> list[Problem]:
    """Like ``check``, from YAML text."""
    return compile_text(text, filename, overrides, env)[1]


def parse(
    path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> tuple[GraphSpec | None, list[Problem]]:
    """Read, interpolate and override a config file without resolving types (shape problems only)."""
    text = _read(path)
    if isinstance(text, Problem):
        return None, [text]
    return parse_text(text, str(path), overrides, env)


def parse_text(
    text: str, filename: str = "<config>", overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> tuple[GraphSpec | None, list[Problem]]:
    """Like ``parse``, from YAML text."""
    spec, problems = _parsed(text, filename, overrides, env)
    return spec, _finished(problems, spec)


def compile_config(
    path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> tuple[Compiled | None, list[Problem]]:
    """Parse and check a config file: (the compiled graph or None, every problem)."""
    text = _read(path)
    if isinstance(text, Problem):
        return None, [text]
    return compile_text(text, str(path), overrides, env)


def compile_text(
    text: str, filename: str = "<config>", overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> tuple[Compiled | None, list[Problem]]:
    """Like ``compile_config``, from YAML text."""
    spec, problems = _parsed(text, filename, overrides, env)
    if spec is None:
        return None, _finished(problems, spec)
    compiled, build_problems = build(spec, frozenset((p.node, p.key) for p in problems if p.node))
    problems = _finished(problems + build_problems, spec)
    return (None if problems else compiled), problems


def _read(path: str | Path) -> str | Problem:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        return Problem(f"cannot read the config: {reason}", fix="check the path", file=str(path))
    except UnicodeDecodeError:
        return Problem("the config is not UTF-8 text", fix="save it as UTF-8", file=str(path))


def _parsed(
    text: str, filename: str, overrides: Sequence[str], env: Mapping[str, str] | None
) -> tuple[GraphSpec | None, list[Problem]]:
    """The spec with overrides applied, and its problems so far (secrets not yet hidden)."""
    spec, problems = read_spec(text, filename, os.environ if env is None else env)
    if spec is not None:
        problems += apply_overrides(spec, overrides)
    return spec, problems


def _finished(problems: list[Problem], spec: GraphSpec | None) -> list[Problem]:
    """Hide the spec's secrets in every message, then order by line (problems without a line last)."""
    if spec is not None:
        hide_secrets(problems, spec.secrets)
        secrets.register(spec.secrets)  # log lines hide them too, a key given with --set included
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def _loaded(compiled: Compiled | None, problems: list[Problem]) -> Graph:
    if compiled is None or problems:
        raise ValidationError(problems)
    return compiled.graph()
