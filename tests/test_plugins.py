"""Node types registered with ``@pipeline.register`` reach the CLI: ``plugins:`` in YAML, or ``--import``.

Each test runs ``python -m pipeline`` in a fresh folder, the way a user who just wrote ``shout.py``
would, so nothing from this test process's registry leaks into the result.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHOUT = """
from dataclasses import dataclass

import pipeline
from pipeline import Processor, param
from pipeline.frames import TextFrame


@pipeline.register("text.shout")
class Shout(Processor):
    handles = (TextFrame,)
    produces = (TextFrame,)

    @dataclass
    class Params:
        suffix: str = param("!", doc="appended to every text")

    async def process(self, frame: TextFrame) -> None:
        await self.push(TextFrame(frame.text.upper() + self.params.suffix))
"""


def _config(plugins: str = "") -> str:
    return f"""{plugins}
nodes:
  say: {{type: source.text, texts: [hello there]}}
  shout: {{type: text.shout}}
  out: {{type: debug.print}}
edges:
  - say -> shout -> out
"""


def _pipeline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_plugins_in_the_config_are_imported_from_beside_it(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "shout.py").write_text(SHOUT)
    (project / "shout.yaml").write_text(_config("plugins: [shout]"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _pipeline("run", str(project / "shout.yaml"), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert "HELLO THERE!" in done.stdout


def test_import_option_registers_types_from_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "shout.py").write_text(SHOUT)
    (tmp_path / "shout.yaml").write_text(_config())
    without = _pipeline("validate", "shout.yaml", cwd=tmp_path)
    assert without.returncode == 2
    assert "unknown type 'text.shout'" in without.stderr
    done = _pipeline("run", "shout.yaml", "--import", "shout", "--set", "shout.suffix=?", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "HELLO THERE?" in done.stdout
    listed = _pipeline("list", "text.shout", "--import", "shout", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "suffix" in listed.stdout


def test_a_misspelled_type_from_a_plugin_gets_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "shout.py").write_text(SHOUT)
    (tmp_path / "shout.yaml").write_text(
        _config("plugins: [shout]").replace("type: text.shout", "type: text.shot")
    )
    done = _pipeline("validate", "shout.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "did you mean 'text.shout'?" in done.stderr


def test_a_missing_plugin_is_reported_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "shout.yaml").write_text(_config("plugins: [no_such_module]"))
    done = _pipeline("validate", "shout.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "shout.yaml:1: cannot import plugin 'no_such_module'" in done.stderr
    flag = _pipeline("validate", "shout.yaml", "--import", "also_missing", cwd=tmp_path)
    assert flag.returncode == 2
    assert "--import also_missing: ModuleNotFoundError" in flag.stderr


def test_plugins_must_be_module_names(tmp_path: Path) -> None:
    (tmp_path / "shout.yaml").write_text(_config("plugins: {shout: 1}"))
    done = _pipeline("validate", "shout.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "plugins must be a list of module names" in done.stderr
