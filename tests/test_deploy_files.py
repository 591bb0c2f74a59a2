"""deploy/ checked offline: Kubernetes manifests against the API schemas (strict), the nginx config by
nginx itself, the systemd unit by systemd-analyze, the Dockerfile by hadolint; and the facts that tie
them to the server — probe paths it answers, the metric the autoscaler reads, stop timeouts longer
than its drain, ports and names that agree — plus what a shared recordings folder relies on: session
ids unique across worker processes and a listing that never shows a half-written conversation."""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from pipeline import config
from tests import nginx_proxy
from tests.webrtc_peers import loopback_only, serving
from transports.telephony.routes import PHONE_PATHS, TELNYX_STREAM, TWILIO_STREAM, TWILIO_VOICE
from transports.webrtc.client import PeerClient
from transports.webrtc.signalling import OFFER_PATH
from transports.websocket.api import Recordings
from transports.websocket.server import VoiceServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
WORKER_CONFIG = DEPLOY / "voxgraph.yaml"
K8S_VERSION = "1.34.0"
NOT_KUBERNETES_OBJECTS = {"kustomization.yaml"}  # read by kubectl's kustomize
CUSTOM_RESOURCES = {"servicemonitor.yaml"}  # a CRD: no schema in kubernetes-validate
STOP_MARGIN = 10  # seconds beyond preStop + drain for the last recorders to flush and sockets to close
API_KEY = "deploy-test-key-0123456789abcdef"
SCRAPE_KEY = "deploy-scrape-key-0123456789abcdef"
TIMEOUT = 30.0


def manifest(name: str) -> dict[str, Any]:
    document = yaml.safe_load((KUBERNETES / name).read_text())
    assert isinstance(document, dict)
    return document


def manifests() -> list[str]:
    return sorted(p.name for p in KUBERNETES.glob("*.yaml"))


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    assert isinstance(only, dict)
    return only


def env_of(item: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in item["env"]}


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The environment the worker config reads, as a deployment provides it."""
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    monkeypatch.setenv("VOXGRAPH_API_KEYS", API_KEY)
    monkeypatch.setenv("VOXGRAPH_METRICS_KEYS", SCRAPE_KEY)
    monkeypatch.setenv("VOXGRAPH_TOKEN_SECRET", "s" * 40)
    monkeypatch.setenv("PUBLIC_HOST", "voice.example.com")
    monkeypatch.setenv("RECORDINGS", str(recordings))
    return recordings


def compiled_worker(*overrides: str) -> config.Compiled:
    compiled, problems = config.compile_config(WORKER_CONFIG, list(overrides))
    assert compiled is not None and not problems, [str(p) for p in problems]
    return compiled


# --- Kubernetes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [n for n in manifests() if n not in NOT_KUBERNETES_OBJECTS | CUSTOM_RESOURCES]
)
def test_manifest_validates_against_the_api_schema(name: str) -> None:
    for document in yaml.safe_load_all((KUBERNETES / name).read_text()):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    deployment = manifest("deployment.yaml")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 330
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_only_the_named_files_lack_a_schema() -> None:
    """A new manifest of a custom kind must be listed (and checked by hand), never skipped silently."""
    unchecked = set()
    for name in manifests():
        document = manifest(name)
        try:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.add(name)
    assert unchecked == NOT_KUBERNETES_OBJECTS | CUSTOM_RESOURCES


def test_kustomization_applies_every_manifest_of_the_app() -> None:
    kustomization = manifest("kustomization.yaml")
    others = set(manifests()) - {"kustomization.yaml", "prometheus-adapter.yaml"}  # the adapter's own
    assert set(kustomization["resources"]) == others
    (image,) = kustomization["images"]
    assert container()["image"].rpartition(":")[0] == image["name"]
    assert manifest("namespace.yaml")["metadata"]["name"] == kustomization["namespace"]


def test_the_configmap_holds_the_worker_config_verbatim() -> None:
    assert manifest("configmap.yaml")["data"]["voxgraph.yaml"] == WORKER_CONFIG.read_text()
    mount = next(m for m in container()["volumeMounts"] if m["name"] == "config")
    config_volume = next(v for v in pod_spec()["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == manifest("configmap.yaml")["metadata"]["name"]
    assert container()["args"][-1] == f"{mount['mountPath']}/voxgraph.yaml"


def test_the_worker_config_is_valid(worker_env: Path) -> None:
    assert config.check(WORKER_CONFIG, []) == []


def test_every_stop_timeout_outlasts_preStop_and_the_drain(worker_env: Path) -> None:
    settings = compiled_worker().server
    assert settings is not None and settings.drain_timeout > 0
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= int(pre_stop[1]) + settings.drain_timeout + STOP_MARGIN
    unit = systemd_unit()
    assert int(unit["TimeoutStopSec"]) >= settings.drain_timeout + STOP_MARGIN
    assert unit["KillSignal"] == "SIGTERM"
    assert "STOPSIGNAL SIGTERM" in (DEPLOY / "Dockerfile").read_text()


def test_selectors_names_and_ports_agree() -> None:
    labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    annotations = manifest("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    service = manifest("service.yaml")
    for selector in (
        service["spec"]["selector"],
        manifest("pdb.yaml")["spec"]["selector"]["matchLabels"],
        manifest("deployment.yaml")["spec"]["selector"]["matchLabels"],
        manifest("servicemonitor.yaml")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert manifest("servicemonitor.yaml")["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    (port,) = container()["ports"]
    env = env_of(container())
    assert int(env["PORT"]) == port["containerPort"] == int(annotations["prometheus.io/port"])
    probes = [container()[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert set(probes) == {port["name"]}
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    for path in manifest("ingress.yaml")["spec"]["rules"][0]["http"]["paths"]:
        assert path["backend"]["service"] == {"name": "voxgraph", "port": {"name": service_port["name"]}}
    (endpoint,) = manifest("servicemonitor.yaml")["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] == annotations["prometheus.io/path"] == "/metrics"
    target = manifest("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", manifest("deployment.yaml")["metadata"]["name"])
    claim = next(v for v in pod_spec()["volumes"] if v["name"] == "recordings")["persistentVolumeClaim"]
    assert claim["claimName"] == manifest("pvc.yaml")["metadata"]["name"]
    assert manifest("pvc.yaml")["spec"]["accessModes"] == ["ReadWriteMany"]
    recordings_mount = next(m for m in container()["volumeMounts"] if m["name"] == "recordings")
    assert env["RECORDINGS"] == recordings_mount["mountPath"]
    assert env["HOST"] == "0.0.0.0"


def test_secrets_come_from_one_secret_that_the_scrape_also_uses() -> None:
    env = env_of(container())
    for variable in ("VOXGRAPH_API_KEYS", "VOXGRAPH_METRICS_KEYS", "VOXGRAPH_TOKEN_SECRET"):
        assert env[variable]["secretKeyRef"]["name"] == "voxgraph-secrets"
    (endpoint,) = manifest("servicemonitor.yaml")["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"]["name"] == "voxgraph-secrets"


def test_pods_relay_webrtc_media_through_a_turn_server_with_the_secrets_credentials(worker_env: Path) -> None:
    """No UDP reaches a pod through the Service or the Ingress: the pods' peers take relayed addresses on
    a TURN server, named by an override on the command line (the ConfigMap stays the worker config)."""
    args = container()["args"]
    override = args[args.index("--set") + 1]
    env = env_of(container())
    turn_url = env["VOXGRAPH_TURN_URL"]
    settings = compiled_worker(override.replace("$(VOXGRAPH_TURN_URL)", turn_url)).server
    assert settings is not None
    assert settings.ice_servers == [turn_url] and turn_url.startswith("turn:")
    for variable in (settings.ice_username_env, settings.ice_credential_env):
        assert env[variable]["secretKeyRef"]["name"] == "voxgraph-secrets"
    assert all(port["protocol"] == "TCP" for port in container()["ports"])


def test_prometheus_scrapes_with_the_pods_scrape_key_not_an_api_key(worker_env: Path) -> None:
    """The ServiceMonitor's credential is what the pods read as scrape keys, so it opens only /metrics
    and /load; the API keys come from another key of the Secret."""
    env = env_of(container())
    settings = compiled_worker().server
    assert settings is not None
    (endpoint,) = manifest("servicemonitor.yaml")["spec"]["endpoints"]
    scrape_credential = endpoint["authorization"]["credentials"]["key"]
    assert env[settings.metrics_keys_env]["secretKeyRef"]["key"] == scrape_credential
    assert env[settings.api_keys_env]["secretKeyRef"]["key"] != scrape_credential


def test_the_autoscaler_reads_the_metric_the_adapter_serves() -> None:
    hpa_metrics = manifest("hpa.yaml")["spec"]["metrics"]
    pods = [m["pods"]["metric"]["name"] for m in hpa_metrics if m["type"] == "Pods"]
    resources = [m["resource"]["name"] for m in hpa_metrics if m["type"] == "Resource"]
    assert pods == ["voxgraph_sessions_active"] and resources == ["cpu"]
    rules = yaml.safe_load(manifest("prometheus-adapter.yaml")["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    assert set(pods) <= served
    assert all(rule["seriesQuery"].startswith(rule["name"]["as"] + "{") for rule in rules)


async def test_probes_answer_without_credentials_and_metrics_export_the_hpa_metric(worker_env: Path) -> None:
    """The kubelet sends no key: /livez and /readyz must be open. Prometheus sends the scrape key."""
    server = VoiceServer(compiled_worker("server.port=0", "server.host=127.0.0.1"))
    await server.start()  # no warm-up: the probes must answer while models would still be loading
    try:
        base = f"http://127.0.0.1:{server.port}"
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                async with client.get(base + container()[probe]["httpGet"]["path"]) as response:
                    assert response.status in (200, 503), probe  # 503: loading, never 401 or 404
            async with client.get(base + "/livez") as response:
                assert response.status == 200
            async with client.get(base + "/metrics") as response:
                assert response.status == 401  # with auth: api_key the figures need a key
            bearer = {"Authorization": f"Bearer {API_KEY}"}
            async with client.get(base + "/metrics", headers=bearer) as response:
                assert response.status == 200
            scrape = {"Authorization": f"Bearer {SCRAPE_KEY}"}
            async with client.get(base + "/metrics", headers=scrape) as response:
                assert response.status == 200
                exported = await response.text()
            async with client.get(base + "/api/conversations", headers=scrape) as response:
                assert response.status == 401  # the scrape key opens nothing else
    finally:
        await server.stop()
    hpa_metric = manifest("hpa.yaml")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert re.search(rf"^{hpa_metric} \d", exported, re.MULTILINE)


# --- nginx -------------------------------------------------------------------------------------------


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf = nginx_proxy.write_config(tmp_path, [18001, 18002, 18003], 18080)
    result = nginx_proxy.check(tmp_path, conf)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr


def test_nginx_config_routes_the_workers_it_is_given(tmp_path: Path) -> None:
    site = nginx_proxy.render_site([18001, 18002, 18003, 18004], 18080)
    upstreams = nginx_proxy.upstream_blocks(site)
    assert set(upstreams) == {CALLS_UPSTREAM, PAGE_UPSTREAM}
    server_line = r"server 127\.0\.0\.1:(\d+) max_fails=(\d+)[^;]*;"
    for block in upstreams.values():
        assert [port for port, _ in re.findall(server_line, block)] == ["18001", "18002", "18003", "18004"]
    # A refusal (503) is not a failure: conversations never take a worker out of rotation, so a full
    # fleet keeps serving the page; the page's upstream keeps passive failure detection.
    assert {fails for _, fails in re.findall(server_line, upstreams[CALLS_UPSTREAM])} == {"0"}
    assert {fails for _, fails in re.findall(server_line, upstreams[PAGE_UPSTREAM])} == {"3"}
    assert "least_conn;" in upstreams[CALLS_UPSTREAM] and "listen 127.0.0.1:18080;" in site
    shipped = nginx_proxy.SHIPPED.read_text()
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", shipped)


def test_nginx_upstream_ports_are_the_systemd_instances() -> None:
    target = (DEPLOY / "systemd" / "voxgraph.target").read_text()
    instances = re.findall(r"voxgraph@(\d+)\.service", target)
    for block in nginx_proxy.upstream_blocks(nginx_proxy.SHIPPED.read_text()).values():
        assert re.findall(r"server 127\.0\.0\.1:(\d+)", block) == instances


CALLS_UPSTREAM, PAGE_UPSTREAM = "voxgraph_calls", "voxgraph_page"
LOCATION = re.compile(r"^    location (=|~|) ?(\S+) \{\n(.*?)^    \}", re.MULTILINE | re.DOTALL)
WEBSOCKET_ROUTES = ("/ws", "/", TWILIO_STREAM, TELNYX_STREAM)  # every route a worker upgrades


def nginx_location(path: str) -> str:
    """The body of the shipped location that nginx picks for ``path``: an exact match, else the first
    matching regex, else the longest prefix."""
    locations: list[tuple[str, str, str]] = LOCATION.findall(nginx_proxy.SHIPPED.read_text())
    for kind, pattern, body in locations:
        if kind == "=" and pattern == path:
            return body
    for kind, pattern, body in locations:
        if kind == "~" and re.search(pattern, path):
            return body
    prefixes = [(prefix, body) for kind, prefix, body in locations if kind == "" and path.startswith(prefix)]
    return max(prefixes, key=lambda item: len(item[0]))[1]


def directive(body: str, name: str) -> str:
    """A directive's arguments in a location, or in the server block when the location sets none."""
    for text in (body, nginx_proxy.SHIPPED.read_text()):
        found = re.search(rf"^\s*{name} ([^;]*);", text, re.MULTILINE)
        if found:
            return found.group(1)
    return ""


@pytest.mark.parametrize("path", WEBSOCKET_ROUTES)
def test_nginx_sends_every_conversation_route_to_the_calls_upstream(path: str) -> None:
    body = nginx_location(path)
    upstream = directive(body, "proxy_pass").removeprefix("http://")
    if upstream.startswith("$"):  # / is the page unless it asks for an upgrade
        shipped = nginx_proxy.SHIPPED.read_text()
        mapping = re.search(rf"map \$http_upgrade {re.escape(upstream)} \{{(.*?)\}}", shipped, re.DOTALL)
        assert mapping is not None
        assert dict(re.findall(r"^\s*(\S+)\s+(\S+);", mapping.group(1), re.MULTILINE)) == {
            "default": CALLS_UPSTREAM,
            '""': PAGE_UPSTREAM,
        }
    else:
        assert upstream == CALLS_UPSTREAM
    assert "http_503" in directive(body, "proxy_next_upstream").split()
    assert directive(body, "proxy_buffering") == "off" and directive(body, "proxy_request_buffering") == "off"
    assert directive(body, "proxy_read_timeout") == directive(body, "proxy_send_timeout") == "1h"


def test_nginx_retries_the_phone_webhook_on_another_worker() -> None:
    """Twilio's webhook is a POST: nginx repeats it elsewhere only with non_idempotent."""
    body = nginx_location(TWILIO_VOICE)
    assert directive(body, "proxy_pass") == f"http://{CALLS_UPSTREAM}"
    assert {"http_503", "non_idempotent"} <= set(directive(body, "proxy_next_upstream").split())
    assert directive(body, "proxy_read_timeout") == "10s"  # Twilio waits 15 s for the answer


def test_nginx_sends_the_webrtc_offer_to_the_calls_upstream_and_retries_a_refusal() -> None:
    """An offer starts a conversation: a 503 (a pod refuses before it makes a peer) goes to the next
    worker, POST or not; the body stays buffered so nginx still holds it for that retry."""
    body = nginx_location(OFFER_PATH)
    assert directive(body, "proxy_pass") == f"http://{CALLS_UPSTREAM}"
    retried = set(directive(body, "proxy_next_upstream").split())
    assert {"error", "timeout", "http_503", "non_idempotent"} <= retried
    assert directive(body, "proxy_buffering") == "off"
    assert "proxy_request_buffering" not in body  # nginx's default: buffered
    # The answer ends the HTTP exchange (the call goes on over UDP), so no conversation-long timeout.
    assert directive(body, "proxy_read_timeout") == "30s"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def access_log_lines(log: Path, count: int) -> list[str]:
    """The first ``count`` lines nginx logged (a request is logged once its exchange is over)."""
    async with asyncio.timeout(TIMEOUT):
        while len(lines := log.read_text().splitlines() if log.exists() else []) < count:
            await asyncio.sleep(0.05)
    return lines[:count]


@pytest.mark.slow
async def test_offers_through_nginx_reach_a_ready_worker_and_end_their_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped config in front of a loading worker and a ready one: each offer that meets the
    loading worker's 503 is sent on to the ready one, and nginx logs every offer as finished while its
    conversation runs, so the offer's timeout need not last a conversation."""
    loopback_only(monkeypatch)
    async with serving() as loading, serving() as ready:
        loading.loading = True  # answers every new conversation with 503, as while loading models
        ready_addr, loading_addr = f"127.0.0.1:{ready.port}", f"127.0.0.1:{loading.port}"
        prefix = tmp_path / "nginx"
        listen = free_port()
        conf = nginx_proxy.write_config(prefix, [loading.port, ready.port], listen)
        nginx = nginx_proxy.start(prefix, conf)
        clients: list[PeerClient] = []
        try:
            for _ in range(2):  # least_conn takes the two idle workers in turn: one offer meets the 503
                clients.append(PeerClient(f"http://127.0.0.1:{listen}/"))
                await connect_when_listening(clients[-1])
            lines = await access_log_lines(prefix / "access.log", 2)
            assert len(ready.sessions) == 2 and not loading.sessions  # both conversations still run
        finally:
            for client in clients:
                await client.close()
            nginx.send_signal(signal.SIGTERM)
            nginx.wait(timeout=TIMEOUT)
    tried = [re.search(r"upstream=\[(.*)\] upstream_status=\[(.*)\]", line) for line in lines]
    assert all(line.startswith(f"{OFFER_PATH} 200 ") for line in lines), lines
    attempts = [(found.group(1).split(", "), found.group(2).split(", ")) for found in tried if found]
    expected = [([loading_addr, ready_addr], ["503", "200"]), ([ready_addr], ["200"])]
    assert sorted(attempts) == sorted(expected)


async def connect_when_listening(client: PeerClient) -> None:
    """``client.connect()``, once nginx (just started) accepts connections."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                await client.connect()
                return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


@pytest.mark.parametrize("path", ["/health", "/api/auth", "/api/conversations", "/static/app.js"])
def test_nginx_sends_the_page_and_the_api_to_the_page_upstream(path: str) -> None:
    body = nginx_location(path)
    assert directive(body, "proxy_pass") == f"http://{PAGE_UPSTREAM}"
    assert "http_503" not in directive(body, "proxy_next_upstream").split()  # workers never say it here


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/load", "/metrics"])
def test_nginx_keeps_the_per_worker_routes_inside(path: str) -> None:
    assert directive(nginx_location(path), "return") == "404"


def test_the_ingress_routes_the_browser_and_phone_routes_only() -> None:
    ingress = manifest("ingress.yaml")
    paths = {p["path"]: p["pathType"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert {path: paths.get(path) for path in PHONE_PATHS} == dict.fromkeys(PHONE_PATHS, "Exact")
    assert paths.get(OFFER_PATH) == "Exact"
    assert not {"/livez", "/readyz", "/load", "/metrics"} & set(paths)
    retried = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert {"http_503", "non_idempotent"} <= set(retried)


REPEATABLE_POSTS = {"/api/session-token", TWILIO_VOICE, "/api/offer"}
"""POST routes that only mint a token, or (``/api/offer``) refuse with 503 before making a peer: a proxy
may send one again to another worker."""


def test_every_post_route_a_worker_takes_is_safe_to_repeat(worker_env: Path) -> None:
    """The proxies retry POSTs (non_idempotent): a new POST route must be checked and listed above."""
    app = VoiceServer(compiled_worker("server.port=0", "server.host=127.0.0.1"))._application()
    posts = {r.resource.canonical for r in app.router.routes() if r.method == "POST" and r.resource}
    assert posts | {TWILIO_VOICE} == REPEATABLE_POSTS  # the phone routes join when a graph answers calls


# --- systemd ------------------------------------------------------------------------------------------


def systemd_unit() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / "voxgraph@.service").read_text())
    return dict(parser["Service"])


def test_systemd_unit_takes_its_port_from_the_instance_name() -> None:
    text = (DEPLOY / "systemd" / "voxgraph@.service").read_text()
    assert "Environment=PORT=%i" in text and "Environment=HOST=127.0.0.1" in text
    unit = systemd_unit()
    assert unit["Restart"] == "on-failure"
    assert unit["ExecStart"].endswith("-m pipeline run /etc/voxgraph/voxgraph.yaml")


def rtc_ports_of_instance(port: int) -> str:
    """The RTC_PORTS an instance's ExecStart gives the worker: its shell run for real, the worker
    replaced by a Python that prints the variable."""
    command = systemd_unit()["ExecStart"].replace("$$", "$").replace("%i", str(port))
    shell, flag, script, *_ = shlex.split(command)
    printer = [sys.executable, "-c", "import os; print(os.environ['RTC_PORTS'])"]
    result = subprocess.run([shell, flag, script, *printer], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_each_systemd_instance_gets_its_own_webrtc_port_range(
    worker_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers on one machine share its addresses: their UDP ranges must not overlap, and each must be
    one the worker config takes."""
    target = (DEPLOY / "systemd" / "voxgraph.target").read_text()
    instances = [int(port) for port in re.findall(r"voxgraph@(\d+)\.service", target)]
    taken: set[int] = set()
    for port in instances:
        ranges = rtc_ports_of_instance(port)
        monkeypatch.setenv("RTC_PORTS", ranges)
        settings = compiled_worker().server
        assert settings is not None and settings.rtc_ports == ranges
        first, last = (int(n) for n in ranges.split("-"))
        assert last - first + 1 >= 10 * settings.max_sessions
        assert not taken & set(range(first, last + 1)), ranges
        taken |= set(range(first, last + 1))
    assert rtc_ports_of_instance(8001) == "40100-40199"  # as the unit and deploy/README.md say


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    for name in ("voxgraph@.service", "voxgraph.target"):
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/voxgraph/.venv/bin/python", sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "./voxgraph@8001.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0 and "voxgraph" not in result.stdout + result.stderr, result.stderr


# --- Dockerfile ---------------------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--format", "json", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], findings
    assert result.returncode == 0


def test_dockerfile_agrees_with_the_project_and_the_pod() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version is not None and f"ARG VOXGRAPH_VERSION={version.group(1)}" in text
    assert re.search(rf"^EXPOSE {container()['ports'][0]['containerPort']}$", text, re.MULTILINE)
    uid = pod_spec()["securityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{uid}$", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/livez" in text
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (ROOT / source).exists(), source
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.MULTILINE)
    assert stages == ["build", "runtime"]


# --- a recordings folder shared by several workers ----------------------------------------------------

IDS_PER_PROCESS = 20000


def test_session_ids_are_unique_across_worker_processes() -> None:
    """Four processes make ids in the same seconds, as workers would; none may meet another's."""
    script = (
        "from pipeline.sessions import new_session_id\n"
        f"print('\\n'.join(new_session_id() for _ in range({IDS_PER_PROCESS})))"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(4)
    ]
    ids = [line for worker in workers for line in worker.communicate(timeout=TIMEOUT)[0].split()]
    assert all(worker.returncode == 0 for worker in workers)
    assert len(ids) == 4 * IDS_PER_PROCESS
    assert len(set(ids)) == len(ids)


WRITER_CONFIG = """
nodes:
  src: {type: source.tone, duration: 0.6, realtime: true}
  recorder: {type: recorder, directory: "%s"}
  sink: {type: debug.null}
edges:
  - src -> recorder -> sink
"""
WRITER = """
import asyncio, sys
from pipeline import config, runner

async def main() -> None:
    for _ in range(int(sys.argv[2])):
        report = await runner.run(config.load(sys.argv[1]))
        assert report.outcome != "failed", report.outcome

asyncio.run(main())
"""
SESSIONS_PER_WRITER = 4
WAV_HEADER_BYTES = 44


@pytest.fixture
def api_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    with caplog.at_level(logging.WARNING, logger="transports.websocket.api"):
        yield caplog.records


def test_listing_a_folder_that_several_workers_write(
    tmp_path: Path, api_warnings: list[logging.LogRecord]
) -> None:
    """Two writer processes record conversations into one folder while it is listed again and again:
    every listed conversation reads whole, none is listed twice, and at the end every conversation is
    listed with whole WAVs."""
    shared = tmp_path / "recordings"
    writer_config = tmp_path / "writer.yaml"
    writer_config.write_text(WRITER_CONFIG % shared)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(writer_config), str(SESSIONS_PER_WRITER)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    recordings = Recordings(shared)
    listings = 0
    try:
        while any(w.poll() is None for w in writers):
            check_listing(recordings)
            listings += 1
    finally:
        for writer in writers:
            _, stderr = writer.communicate(timeout=TIMEOUT)
            assert writer.returncode == 0, stderr.decode()
    final = check_listing(recordings, finished=True)
    assert len(final) == 2 * SESSIONS_PER_WRITER
    assert all(set(entry["audio"]) == {"user.wav", "mixed.wav"} for entry in final)
    assert listings > 10  # the listing really ran while they wrote
    assert api_warnings == []


def check_listing(recordings: Recordings, finished: bool = False) -> list[dict[str, Any]]:
    """Every listed conversation reads whole: its transcript names it, its WAVs parse and never claim
    more audio than they hold (the header lags a live recording); once ``finished``, exactly that."""
    entries = recordings.conversations()
    ids = [entry["id"] for entry in entries]
    assert len(set(ids)) == len(ids)
    for entry in entries:
        transcript = recordings.transcript(entry["id"])
        assert transcript is not None and transcript["session_id"] == entry["id"]
        for name in entry["audio"]:
            path = recordings.path(entry["id"], name)
            assert path is not None
            if path.stat().st_size < WAV_HEADER_BYTES:
                continue  # created this instant, header not written yet
            with wave.open(str(path)) as audio:
                declared = audio.getnframes() * audio.getsampwidth() * audio.getnchannels()
            # Measured after the header is read: a writer appends audio before it rewrites the sizes.
            held = path.stat().st_size - WAV_HEADER_BYTES
            assert declared == held if finished else declared <= held
    return entries
