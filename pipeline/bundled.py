"""The configs that ship with Voxgraph, found the same way in a checkout and in an installed wheel.

The wheel carries ``configs/`` beside the ``pipeline`` package, exactly as a checkout has it, so one
rule finds them in both: ``python -m pipeline run assistant`` works without a checkout, and
``python -m pipeline init`` copies them into the current folder to edit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "configs"
"""Where the shipped configs are: ``configs/`` next to this package."""


def bundled_configs() -> list[str]:
    """Names of the shipped configs (``assistant``, ``examples/echo-websocket``, ...), sorted."""
    if not BUNDLED.is_dir():
        return []
    return sorted(p.relative_to(BUNDLED).with_suffix("").as_posix() for p in BUNDLED.rglob("*.yaml"))


def find_config(argument: str) -> Path:
    """The config file a command line names: an existing path as given, else a shipped config by name.

    ``assistant``, ``assistant.yaml`` and ``configs/assistant.yaml`` all name the shipped assistant
    when no such file exists here; a path that is neither is returned unchanged, so reading it
    reports it missing.
    """
    given = Path(argument)
    if given.exists():
        return given
    name = given.as_posix().removeprefix("configs/")
    shipped = BUNDLED / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return shipped if shipped.is_file() else given


def init(destination: Path) -> tuple[list[Path], list[Path]]:
    """Copy the shipped configs into ``destination/configs``: (files written, files left as they were).

    Existing files are never overwritten: a user's edits survive a second ``init``.
    """
    written: list[Path] = []
    kept: list[Path] = []
    for name in bundled_configs():
        target = destination / "configs" / f"{name}.yaml"
        if target.exists():
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BUNDLED / f"{name}.yaml", target)
        written.append(target)
    return written, kept
