"""A regular (non-editable) install works: the wheel serves its page and runs shipped configs by name.

The wheel is built from this checkout and installed into a fresh virtualenv outside it. Only Voxgraph
itself goes in (``--no-deps``); its dependencies come from the test's own environment through a
``.pth`` line, so the test needs no network and still imports nothing from the checkout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import bundled

ROOT = Path(__file__).resolve().parent.parent
BANNER = re.compile(r"http://127\.0\.0\.1:(\d+)/")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
        cwd=out,
    )
    (built,) = out.glob("voxgraph-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel; returns its python."""
    home = tmp_path_factory.mktemp("fresh")
    venv.create(home / "venv", with_pip=False)
    python = home / "venv" / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    (Path(purelib) / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_ships_the_page_the_configs_and_type_information(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for page_file in (ROOT / "transports" / "websocket" / "page").iterdir():
        assert f"transports/websocket/page/{page_file.name}" in names
    for package in ("pipeline", "processors", "transports"):
        assert f"{package}/py.typed" in names
    for name in bundled.bundled_configs():
        assert f"configs/{name}.yaml" in names
    assert not any(name.startswith("tests/") for name in names)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working folder with no checkout in sight."""
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PORT", "HOST")}
    env["PYTHONPATH"] = ""
    return env


def test_the_installed_package_imports_from_the_fresh_environment(installed: Path, outside: Path) -> None:
    found = subprocess.run(
        [str(installed), "-c", "import pipeline, transports; print(pipeline.__file__, transports.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=outside,
        env=_clean_env(),
        timeout=60,
    ).stdout
    assert str(ROOT) not in found
    assert str(installed.parent.parent) in found


@pytest.fixture
def served(installed: Path, outside: Path) -> Iterator[int]:
    """The shipped echo config served by the installed wheel, by name; yields its port."""
    process = subprocess.Popen(
        [str(installed), "-m", "pipeline", "run", "examples/echo-websocket", "--set", "server.port=0"],
        cwd=outside,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()  # printed once listening; EOF if it failed to start
        match = BANNER.search(banner)
        assert match, f"no banner: {banner!r}; stderr: {process.stderr.read() if process.stderr else ''}"
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_the_installed_wheel_serves_the_page(served: int) -> None:
    base = f"http://127.0.0.1:{served}"
    with urllib.request.urlopen(f"{base}/", timeout=10) as response:
        assert response.status == 200
        assert "<html" in response.read().decode().lower()
    with urllib.request.urlopen(f"{base}/static/app.js", timeout=10) as response:
        assert response.status == 200
        assert b"WebSocket" in response.read()


def test_init_writes_the_shipped_configs_and_keeps_edits(installed: Path, outside: Path) -> None:
    edited = outside / "configs" / "hello.yaml"
    edited.parent.mkdir()
    edited.write_text("# mine\n")
    done = subprocess.run(
        [str(installed), "-m", "pipeline", "init"],
        cwd=outside,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (outside / "configs" / "assistant.yaml").read_text() == (
        ROOT / "configs" / "assistant.yaml"
    ).read_text()
    assert (outside / "configs" / "examples" / "echo-websocket.yaml").is_file()
    assert edited.read_text() == "# mine\n"
    assert "kept 1 existing file" in done.stderr
    valid = subprocess.run(
        [str(installed), "-m", "pipeline", "validate", "configs/examples/resample-tone.yaml"],
        cwd=outside,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert valid.returncode == 0, valid.stderr


def test_a_shipped_config_is_found_by_name_and_a_local_file_wins(tmp_path: Path) -> None:
    assert bundled.find_config("hello") == bundled.BUNDLED / "hello.yaml"
    assert (
        bundled.find_config("configs/hello.yaml").read_text() == (ROOT / "configs" / "hello.yaml").read_text()
    )
    local = tmp_path / "hello.yaml"
    local.write_text("name: mine\n")
    assert bundled.find_config(str(local)) == local
    missing = tmp_path / "nothing.yaml"
    assert bundled.find_config(str(missing)) == missing
