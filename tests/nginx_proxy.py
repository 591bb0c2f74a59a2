"""The shipped nginx config (deploy/nginx/voxgraph.conf) made runnable in a test: its upstreams pointed
at the test's workers, its listen at a free loopback port, inside a main config whose every path
(pid, logs, temporary files) is under one prefix folder, so nginx runs without root and leaves nothing
behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "voxgraph.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UPSTREAM = re.compile(r"^upstream (\w+) \{\n.*?^\}\n", re.MULTILINE | re.DOTALL)
UPSTREAM_SERVER = re.compile(r"^(\s*)server 127\.0\.0\.1:\d+( [^;\n]*)?;\n", re.MULTILINE)
LISTEN = re.compile(r"^(\s*)listen 80;$", re.MULTILINE)
ACCESS_FORMAT = "$request_uri $status upstream=[$upstream_addr] upstream_status=[$upstream_status]"
"""One line per request with every worker nginx tried and what each answered (``, ``-separated)."""


def render_site(worker_ports: list[int], listen_port: int, shipped: str | None = None) -> str:
    """The shipped site config with, in every upstream block, one line per worker port (each keeping
    the parameters of that block's first shipped line) and ``listen`` on 127.0.0.1:``listen_port``.
    Raises ``ValueError`` if the shipped file no longer has the lines this replaces."""
    text = SHIPPED.read_text() if shipped is None else shipped
    blocks = list(UPSTREAM.finditer(text))
    if not blocks or not LISTEN.search(text):
        raise ValueError(f"{SHIPPED}: no 'upstream NAME {{ ... }}' block or no 'listen 80;'")
    for block in reversed(blocks):  # from the end, so earlier offsets stay valid
        rewritten = _point_upstream(block.group(0), worker_ports)
        text = text[: block.start()] + rewritten + text[block.end() :]
    return LISTEN.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{listen_port};", text)


def _point_upstream(block: str, worker_ports: list[int]) -> str:
    """One upstream block with its ``server`` lines replaced by one per port, in their place."""
    servers = list(UPSTREAM_SERVER.finditer(block))
    if not servers:
        raise ValueError(f"{SHIPPED}: an upstream block has no 'server 127.0.0.1:PORT ...;' line")
    indent, parameters = servers[0].group(1), servers[0].group(2) or ""
    lines = "".join(f"{indent}server 127.0.0.1:{port}{parameters};\n" for port in worker_ports)
    return block[: servers[0].start()] + lines + UPSTREAM_SERVER.sub("", block[servers[0].end() :])


def upstream_blocks(site: str) -> dict[str, str]:
    """Each ``upstream`` block of a site config by name, its text from ``upstream`` to ``}``."""
    return {block.group(1): block.group(0) for block in UPSTREAM.finditer(site)}


def main_config(prefix: Path, site: Path) -> str:
    """A main config around ``site``: foreground, one worker, every file under ``prefix``."""
    temp_paths = "\n".join(
        f"    {module}_temp_path {prefix / module};"
        for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if module == "client_body" or module in _built_modules()
    )
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must read the test's folders
    return (
        f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        f"    log_format upstreams '{ACCESS_FORMAT}';\n"
        f"    access_log {prefix / 'access.log'} upstreams;\n"
        f"{temp_paths}\n"
        f"    include {site};\n"
        "}\n"
    )


def write_config(prefix: Path, worker_ports: list[int], listen_port: int) -> Path:
    """Write the site and main configs under ``prefix``; returns the main config's path."""
    prefix.mkdir(parents=True, exist_ok=True)
    site = prefix / "voxgraph.conf"
    site.write_text(render_site(worker_ports, listen_port))
    main = prefix / "nginx.conf"
    main.write_text(main_config(prefix, site))
    return main


def check(prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``conf``."""
    return subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True, timeout=30
    )


def start(prefix: Path, conf: Path) -> subprocess.Popen[bytes]:
    """nginx in the foreground (stop it with SIGQUIT, or SIGTERM for at once); stderr to a file."""
    stderr = (prefix / "stderr.log").open("wb")
    try:
        return subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    finally:
        stderr.close()


def _built_modules() -> set[str]:
    """The proxy modules with temporary files that this nginx was built with."""
    configure = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=10).stderr
    return {m for m in ("proxy", "fastcgi", "uwsgi", "scgi") if f"--without-http_{m}_module" not in configure}
