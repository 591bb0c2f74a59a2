"""Logging: quiet by default, and secret values never reach a log line or the CLI's output."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from pipeline import logs
from pipeline.logs import RedactSecrets

REPO = Path(__file__).resolve().parent.parent
SECRET = "sk-test-0123456789abcdef"
ENV = {
    "OPENAI_API_KEY": SECRET,
    "HF_TOKEN": "hf_abcdefghij",
    "app_secret": "lower-case-name",
    "DB_PASSWORD": "correct horse",
    "GCP_CREDENTIALS": "/etc/creds.json",
    "SHORT_KEY": "abc",
    "HOME": "/home/someone",
}


def logger_into(stream: io.StringIO, env: dict[str, str]) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets(env))
    logger = logging.getLogger(f"tests.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_secret_values_are_replaced_in_messages_and_their_args() -> None:
    stream = io.StringIO()
    log = logger_into(stream, ENV)
    log.warning("request failed: Authorization: Bearer %s", SECRET)
    log.warning(f"retrying with {ENV['HF_TOKEN']} and {ENV['DB_PASSWORD']!r}")
    log.warning("creds at %s, secret %s", ENV["GCP_CREDENTIALS"], ENV["app_secret"])
    assert stream.getvalue().splitlines() == [
        "request failed: Authorization: Bearer ***",
        "retrying with *** and '***'",
        "creds at ***, secret ***",
    ]


def test_secret_values_are_replaced_in_exception_text() -> None:
    stream = io.StringIO()
    log = logger_into(stream, ENV)
    try:
        try:
            raise ConnectionError(f"401 for https://api.example.com/?key={SECRET}")
        except ConnectionError as cause:
            raise RuntimeError(f"login failed with {ENV['HF_TOKEN']}") from cause
    except RuntimeError:
        log.exception("the model could not start")
    text = stream.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: login failed with ***" in text
    assert "ConnectionError: 401 for https://api.example.com/?key=***" in text
    assert SECRET not in text
    assert ENV["HF_TOKEN"] not in text


def test_only_secret_looking_names_with_long_enough_values_are_redacted() -> None:
    redact = RedactSecrets(ENV).redact
    assert redact("home is /home/someone") == "home is /home/someone"
    assert redact("abc and abcdef") == "abc and abcdef"  # SHORT_KEY is too short to be told from words
    assert redact(f"{SECRET}{SECRET}") == "******"


def test_the_longest_secret_wins_when_one_contains_another() -> None:
    redact = RedactSecrets({"A_KEY": "abcdef", "B_KEY": "abcdefghij"}).redact
    assert redact("abcdefghij and abcdef") == "*** and ***"


def test_the_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGRAPH_TEST_API_KEY", "from-the-environment")
    assert RedactSecrets().redact("x from-the-environment y") == "x *** y"


def emit_at_every_level(verbosity: int) -> str:
    stream = io.StringIO()
    logs.configure(verbosity, stream)
    log = logging.getLogger("pipeline.tests")
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")
    return stream.getvalue()


def test_configure_0_shows_warnings_only() -> None:
    text = emit_at_every_level(0)
    assert "warning line" in text
    assert "info line" not in text
    assert "debug line" not in text


def test_configure_1_shows_info_and_2_shows_debug() -> None:
    text = emit_at_every_level(1)
    assert "INFO pipeline.tests: info line" in text
    assert "debug line" not in text
    assert "DEBUG pipeline.tests: debug line" in emit_at_every_level(2)


def test_configure_replaces_its_handler_and_redacts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGRAPH_TEST_TOKEN", SECRET)
    first, second = io.StringIO(), io.StringIO()
    logs.configure(0, first)
    logs.configure(0, second)
    logging.getLogger("pipeline.tests").warning("sent %s", SECRET)
    assert first.getvalue() == ""
    assert second.getvalue().count("sent ***") == 1
    assert SECRET not in second.getvalue()


def test_configure_keeps_chatty_libraries_quiet_at_info() -> None:
    emit_at_every_level(1)
    logging.getLogger("asyncio").info("selector chatter")
    assert not logging.getLogger("asyncio").isEnabledFor(logging.INFO)


# --- end to end: secrets fed through ${...} into a processor that echoes them ---------------------

REFUSED = """\
nodes:
  src: {type: source.text, texts: [hello]}
  svc: {type: "tests.cli_nodes:Refuses", api_key: "${SOME_API_KEY}"}
  out: {type: debug.print}
edges:
  - src -> svc -> out
"""

LEAKY = """\
nodes:
  src: {type: source.text, texts: [hello]}
  svc: {type: "tests.cli_nodes:LeakyConstructor", api_key: "${SOME_API_KEY}"}
  out: {type: debug.print}
edges:
  - src -> svc -> out
"""


def python_m_pipeline(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, argv)],
        cwd=REPO,
        env={**os.environ, "SOME_API_KEY": SECRET},
        capture_output=True,
        text=True,
        timeout=15,
    )


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secret.yaml"
    path.write_text(dedent(text))
    return path


def test_a_leaked_key_never_reaches_validate_output(tmp_path: Path) -> None:
    result = python_m_pipeline("validate", config(tmp_path, LEAKY))
    assert result.returncode == 2
    assert "could not log in with ${SOME_API_KEY}" in result.stderr  # the reference, not the value
    assert SECRET not in result.stdout + result.stderr


def test_a_leaked_key_never_reaches_run_logs(tmp_path: Path) -> None:
    path = config(tmp_path, REFUSED)
    assert python_m_pipeline("validate", path).returncode == 0
    for verbosity in ([], ["-vv"]):
        result = python_m_pipeline(*verbosity, "run", path)
        assert result.returncode == 1
        assert "the service refused key ***" in result.stderr
        assert SECRET not in result.stdout + result.stderr


def test_a_leaked_key_never_reaches_the_summary(tmp_path: Path) -> None:
    result = python_m_pipeline("run", config(tmp_path, REFUSED), "--summary")
    assert result.returncode == 1
    assert "error in svc:" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_a_leaked_key_never_reaches_the_metrics_file(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    result = python_m_pipeline("run", config(tmp_path, REFUSED), "--metrics", metrics)
    assert result.returncode == 1
    report = json.loads(metrics.read_text())
    assert report["errors"][0]["processor"] == "svc"
    assert SECRET not in metrics.read_text()


def test_a_key_given_with_set_is_hidden_from_library_debug_logs() -> None:
    """At -vvv the websockets library logs request headers; a key from --set must not show."""
    from pipeline import config

    key = "sk-set-on-the-command-line-0123"
    text = """
nodes:
  src: {type: source.tone, sample_rate: 16000, duration: 0.1}
  stt: {type: stt.assemblyai, api_key: placeholder-key}
  out: {type: debug.null}
edges: [src -> stt -> out]
"""
    assert config.check_text(text, overrides=[f"stt.api_key={key}"], env={}) == []
    stream = io.StringIO()
    logger = logger_into(stream, {})
    logger.debug("> GET /v3/ws HTTP/1.1\n> Authorization: %s", key)
    assert key not in stream.getvalue()
    assert "Authorization: ***" in stream.getvalue()
