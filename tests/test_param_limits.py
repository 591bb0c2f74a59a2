"""Param limits are declared with the param and checked in one place, with the config's file and line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from pipeline import Processor, param
from pipeline.cli import describe
from pipeline.config import check_text
from pipeline.errors import ValidationError
from pipeline.frames import Frame, TextFrame
from pipeline.params import build_params


@dataclass
class LimitedParams:
    gain: float = param(1.0, ge=0, le=4, doc="how much louder")
    window: int = param(20, gt=0, doc="ms")
    mode: str = param("fast", choices=("fast", "exact"), doc="how")
    name: str = param("x", check=lambda v: v.isidentifier(), fix="use letters, digits and _", doc="id")
    token: str = param("secret-value", check=lambda v: v.startswith("secret"), secret=True, doc="key")


class Limited(Processor[LimitedParams]):
    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)


def _problems(**values: object) -> list[tuple[str | None, str, str]]:
    _, problems = build_params(LimitedParams, values)
    return [(p.key, p.message, p.fix) for p in problems]


def test_values_within_their_limits_pass() -> None:
    assert _problems(gain=0, window=1, mode="exact", name="a_b") == []


def test_each_kind_of_limit_names_the_param_and_the_fix() -> None:
    assert _problems(gain=4.5, window=0, mode="slow", name="a b") == [
        ("gain", "gain 4.5 is out of range", "use 0 to 4"),
        ("window", "window 0 is out of range", "use more than 0"),
        ("mode", "mode 'slow' is not one of 'fast', 'exact'", "use one of 'fast', 'exact'"),
        ("name", "name 'a b' is not usable", "use letters, digits and _"),
    ]


def test_a_secret_value_never_appears_in_its_problem() -> None:
    ((key, message, _),) = _problems(token="leaked-key-12345")
    assert key == "token" and "leaked" not in message


def test_a_params_object_built_in_python_is_checked_too() -> None:
    with pytest.raises(ValidationError) as caught:
        Limited(LimitedParams(gain=9, mode="slow"), name="limited")
    assert [(p.node, p.key, p.message) for p in caught.value.problems] == [
        ("limited", "gain", "gain 9 is out of range"),
        ("limited", "mode", "mode 'slow' is not one of 'fast', 'exact'"),
    ]


def test_limits_are_reported_at_the_line_of_the_value() -> None:
    problems = check_text(
        """nodes:
  say: {type: source.text, texts: [hi]}
  limited:
    type: "tests.test_param_limits:Limited"
    gain: 9
edges: [say -> limited]
""",
        "limits.yaml",
    )
    assert [str(p) for p in problems] == [
        "limits.yaml:5: node 'limited': gain 9 is out of range\n    fix: use 0 to 4"
    ]


def test_list_shows_the_limits() -> None:
    params = {p["name"]: p for p in describe("limited", Limited)["params"]}
    assert params["gain"]["limits"] == "0 to 4"
    assert params["mode"]["limits"] == "one of 'fast', 'exact'"
    assert params["window"]["limits"] == "more than 0"


def test_a_builtin_limit_and_a_rule_between_params_are_reported_at_their_lines() -> None:
    problems = check_text(
        """nodes:
  mic: {type: source.silence, channels: 0}
  vad:
    type: vad.silero
    stop_secs: 0.3
    pause_secs: 0.4
  out: {type: debug.null}
edges: [mic -> vad -> out]
""",
        "vad.yaml",
    )
    assert [(p.line, p.key, p.message) for p in problems] == [
        (2, "channels", "channels 0 is out of range"),
        (6, "pause_secs", "pause_secs 0.4 is not below stop_secs (0.3)"),
    ]
