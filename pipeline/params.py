"""Typed processor parameters: a processor declares a dataclass, this module checks values against it.

Checking happens before anything runs, so a YAML typo is reported with the others, not as a crash
minutes into a call.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pipeline.errors import Problem
from pipeline.secrets import hide


@dataclass(slots=True)
class NoParams:
    """Parameters of a processor that takes none."""


def param(
    default: Any = dataclasses.MISSING,
    *,
    doc: str = "",
    secret: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    check: Callable[[Any], bool] | None = None,
    fix: str = "",
) -> Any:
    """Declare a param with a one-line ``doc`` (shown by ``list``) and the values it may take.

    ``ge``/``gt``/``le``/``lt`` bound a number, ``choices`` lists the values allowed, and ``check``
    is any other rule (``fix`` says how to satisfy it). They are checked in one place
    (``build_params``), before anything runs, and reported with the config's file and line.
    ``secret`` values (API keys) never appear in logs, ``repr``, errors or ``list`` output. Mutable
    defaults are copied.
    """
    limits = Limits(ge, gt, le, lt, tuple(choices) if choices is not None else None, check, fix)
    metadata = {"doc": doc, "secret": secret, "limits": limits}
    if default is dataclasses.MISSING:
        return dataclasses.field(repr=not secret, metadata=metadata)
    if isinstance(default, list | dict | set):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), repr=not secret, metadata=metadata
        )
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Limits:
    """The values a param may take (``param(ge=..., choices=..., check=...)``)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    fix: str = ""

    def problem(self, key: str, value: Any, written: Any = None) -> tuple[str, str] | None:
        """(what is wrong, how to fix it) when ``value`` breaks a limit; None when it is fine.

        ``written`` is the value as the config wrote it, for the message (``9``, not ``9.0``).
        """
        shown = repr(value if written is None else written)
        if value is None:
            return None  # an optional param left unset
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            return f"{key} {shown} is not one of {allowed}", self.fix or f"use one of {allowed}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            broken = (
                (self.ge is not None and value < self.ge)
                or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le)
                or (self.lt is not None and value >= self.lt)
            )
            if broken:
                return f"{key} {shown} is out of range", self.fix or f"use {self.describe()}"
        if self.check is not None and not self.check(value):
            return (
                f"{key} {value!r} is not usable",
                self.fix or "see the param's doc (python -m pipeline list)",
            )
        return None

    def describe(self) -> str:
        """The range in words: ``0 or more``, ``more than 0``, ``0 to 5``."""
        low = (
            f"{self.ge:g}" if self.ge is not None else f"more than {self.gt:g}" if self.gt is not None else ""
        )
        high = (
            f"{self.le:g}" if self.le is not None else f"less than {self.lt:g}" if self.lt is not None else ""
        )
        if low and high:
            return f"{low} to {high}" if self.ge is not None and self.le is not None else f"{low} and {high}"
        if low:
            return f"{low} or more" if self.ge is not None else low
        return f"{high} or less" if self.le is not None else high


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """What ``python -m pipeline list`` shows for one param."""

    name: str
    type_name: str
    required: bool
    default: Any
    secret: bool
    doc: str
    limits: str = ""
    """The allowed values in words (``0 to 5``, ``one of 'a'``); empty: any value of its type."""


def param_specs(params_cls: type) -> list[ParamSpec]:
    """Describe every field of a params dataclass."""
    hints = typing.get_type_hints(params_cls)
    docs = _field_docs(params_cls)
    specs = []
    for f in dataclasses.fields(params_cls):
        default: Any = None
        required = False
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            required = True
        specs.append(
            ParamSpec(
                name=f.name,
                type_name=type_name(hints[f.name]),
                required=required,
                default=default,
                secret=bool(f.metadata.get("secret")),
                doc=docs.get(f.name, ""),
                limits=_limits_text(f.metadata.get("limits")),
            )
        )
    return specs


def _limits_text(limits: Limits | None) -> str:
    if limits is None:
        return ""
    if limits.choices is not None:
        return "one of " + ", ".join(repr(c) for c in limits.choices)
    return limits.describe()


def build_params(
    params_cls: type, values: dict[str, Any], node: str | None = None
) -> tuple[Any, list[Problem]]:
    """Check ``values`` against ``params_cls`` and build it; returns (params or None, problems)."""
    hints = typing.get_type_hints(params_cls)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    problems: list[Problem] = []
    accepted: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            problems.append(_unknown_param(key, list(fields), node))
            continue
        converted, error = convert(value, hints[key])
        if error:
            problems.append(
                Problem(
                    f"param '{key}' expects {type_name(hints[key])}, got {_show(value, fields[key])}",
                    fix=f"set {key} to {error}",
                    node=node,
                    key=key,
                )
            )
            continue
        broken = _limit_problem(fields[key], converted, value, node)
        if broken is not None:
            problems.append(broken)
        else:
            accepted[key] = converted
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in values:
            problems.append(
                Problem(
                    f"missing required param '{name}' ({type_name(hints[name])})",
                    fix=f"add '{name}: <value>' to the node",
                    node=node,
                )
            )
    if problems:
        return None, problems
    return params_cls(**accepted), []


def limit_problems(params: Any, node: str | None = None) -> list[Problem]:
    """The declared limits that a params object built in Python (not from a config) breaks."""
    if not dataclasses.is_dataclass(params):
        return []
    found = (_limit_problem(f, getattr(params, f.name), None, node) for f in dataclasses.fields(params))
    return [problem for problem in found if problem is not None]


def _limit_problem(f: dataclasses.Field[Any], value: Any, written: Any, node: str | None) -> Problem | None:
    """The problem of ``value`` for field ``f`` if it breaks the field's declared limits."""
    limits = f.metadata.get("limits")
    broken = limits.problem(f.name, value, written) if limits is not None else None
    if broken is None:
        return None
    message, fix = broken
    if f.metadata.get("secret"):
        message = f"{f.name} is not usable"
    return Problem(message, fix=fix, node=node, key=f.name, code="param-limit")


def convert(value: Any, hint: Any) -> tuple[Any, str]:
    """Coerce ``value`` to ``hint`` where that is lossless; returns (value, "" or what is expected)."""
    origin = get_origin(hint)
    if hint is Any:
        return value, ""
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None, ""
        expected = []
        for option in options:
            if option is type(None):
                expected.append("null")
                continue
            converted, error = convert(value, option)
            if not error:
                return converted, ""
            expected.append(error)
        return value, " or ".join(expected)
    if origin is Literal:
        choices = get_args(hint)
        if value in choices:
            return value, ""
        return value, "one of " + ", ".join(repr(c) for c in choices)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return value, f"a list of {type_name(get_args(hint)[0])}" if get_args(hint) else "a list"
        item_hint = get_args(hint)[0] if get_args(hint) else Any
        items = []
        for item in value:
            converted, error = convert(item, item_hint)
            if error:
                return value, f"a list of {type_name(item_hint)}"
            items.append(converted)
        return (items if origin is list else tuple(items)), ""
    if origin is dict:
        if not isinstance(value, dict):
            return value, "a mapping"
        return value, ""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        for member in hint:
            if value in (member.value, member.name):
                return member, ""
        return value, "one of " + ", ".join(repr(m.value) for m in hint)
    if hint is bool:
        return value, "" if isinstance(value, bool) else "true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value, "" if ok else "a whole number"
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), ""
        return value, "a number"
    if hint is str:
        return value, "" if isinstance(value, str) else "a string (quote it)"
    if hint is Path:
        return (Path(value), "") if isinstance(value, str | Path) else (value, "a path")
    if isinstance(hint, type):
        return value, "" if isinstance(value, hint) else f"a {hint.__name__}"
    return value, ""


def type_name(hint: Any) -> str:
    """Human name of a type hint, as shown in errors and ``list``."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(hint))
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(hint))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in get_args(hint))}]"
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return " | ".join(repr(m.value) for m in hint)
    return getattr(hint, "__name__", str(hint))


def hide_secret_params(text: str, params: Any) -> str:
    """``text`` with the value of every ``secret`` param of ``params`` replaced by ``***``.

    An SDK's exception often echoes the request, key included; errors travel as frames and into
    reports, so they are cleaned where they are made.
    """
    if not dataclasses.is_dataclass(params):
        return text
    return hide(
        text,
        [getattr(params, f.name, None) or "" for f in dataclasses.fields(params) if f.metadata.get("secret")],
    )


def did_you_mean(word: str, choices: list[str]) -> str | None:
    """The closest choice to a misspelt word, if any is close."""
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_param(key: str, known: list[str], node: str | None) -> Problem:
    guess = did_you_mean(key, known)
    if guess:
        fix = f"did you mean '{guess}'?"
    elif known:
        fix = "known params: " + ", ".join(known)
    else:
        fix = "this type takes no params: remove it"
    return Problem(f"unknown param '{key}'", fix=fix, node=node, key=key, code="unknown-param")


def _show(value: Any, f: dataclasses.Field[Any]) -> str:
    if f.metadata.get("secret"):
        return f"a {type(value).__name__}"
    return f"{value!r} ({type(value).__name__})"


def _field_docs(params_cls: type) -> dict[str, str]:
    """Each field's ``param(doc=...)`` text."""
    return {f.name: str(f.metadata.get("doc", "")) for f in dataclasses.fields(params_cls)}
