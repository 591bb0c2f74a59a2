"""Environment variables in config values: ``${VAR}``, ``${VAR:-default}`` and ``$$`` for a literal ``$``.

Configs are shared and committed, credentials are not: they come from the environment. So the value of
a credential-named variable (``*_KEY``, ``*TOKEN*``, ...) or one given to a credential-named key
(``api_key: ${ANY}``) is recorded as a secret, and ``hide_secrets`` shows ``${VAR}`` in its place in any
message, including errors raised by third-party processors. Other values (a path in ``${INPUT}``) stay
readable in messages; params declared ``secret`` are hidden whatever their variable is called.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.errors import Problem
from pipeline.secrets import hide, is_secret, is_secret_name

_TOKEN = re.compile(r"\$(?:\$|\{[^}]*\}|\{)")
"""``$$``, a ``${...}`` reference, or a ``${`` nothing closes; any other ``$`` is literal."""
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHOLE_REFERENCE = re.compile(r"\$\{[^}]*\}")


@dataclass(slots=True)
class Substitution:
    """The outcome of substituting one value."""

    text: str
    """The substituted text (the text as written when a ``${`` is unclosed)."""
    references: list[str] = field(default_factory=list)
    """``${NAME}`` for each variable used, in order: what messages show instead of the value."""
    problems: list[Problem] = field(default_factory=list)
    """Bad references; the caller adds the file, line and node."""
    secrets: dict[str, str] = field(default_factory=dict)
    """Substituted environment text -> the reference to show instead."""


def substitute(text: str, env: Mapping[str, str], key: str) -> Substitution:
    """Substitute every reference in ``text``, the value of ``key``; problems name ``key``."""
    result = Substitution(text)
    pieces: list[str] = []
    end = 0
    for match in _TOKEN.finditer(text):
        pieces.append(text[end : match.start()])
        end = match.end()
        token = match.group()
        if token == "$$":
            pieces.append("$")
        elif token == "${":
            fix = "close it with '}', or write '$$' for a literal '$'"
            result.problems.append(Problem(f"unclosed '${{' in the value of '{key}'", fix=fix, key=key))
            return result
        else:
            pieces.append(_lookup(token, env, key, result))
    result.text = "".join(pieces) + text[end:]
    return result


def is_whole_reference(text: str) -> bool:
    """Whether ``text`` is exactly one ``${...}``: such a value is read as a YAML scalar once substituted."""
    return _WHOLE_REFERENCE.fullmatch(text) is not None


def hide_secrets(problems: Iterable[Problem], secrets: Mapping[str, str]) -> None:
    """Replace sensitive text in every message and fix (longest first, so no secret is half-hidden)."""
    for problem in problems:
        problem.message = hide(problem.message, secrets)
        problem.fix = hide(problem.fix, secrets)


def _lookup(reference: str, env: Mapping[str, str], key: str, result: Substitution) -> str:
    """The text of one ``${...}``; a bad or unset reference is recorded and stands for nothing."""
    name, has_default, default = reference[2:-1].partition(":-")
    if not _VARIABLE.fullmatch(name):
        result.problems.append(
            Problem(
                f"'{reference}' is not a variable reference",
                fix="write ${NAME} or ${NAME:-default} (letters, digits, _), or '$$' for a literal '$'",
                key=key,
            )
        )
        return ""
    shown = f"${{{name}}}"
    result.references.append(shown)
    value = env.get(name)
    if value:
        if is_secret(value) and (is_secret_name(name) or is_secret_name(key)):
            result.secrets[value] = shown
        return value
    if has_default:
        return default
    if value is None:
        result.problems.append(
            Problem(
                f"environment variable {name} is not set",
                fix=f"export {name}=... or give a default: ${{{name}:-...}}",
                key=key,
            )
        )
    return ""
