"""Secrets (API keys, tokens): values that never appear in a repr, a log line or an error.

A :class:`Secret` is made from an environment reference in a config file (``${GEMINI_API_KEY}``)
or from a string in Python code. ``str()`` and ``repr()`` show only where it came from; the value
is read with :meth:`Secret.reveal` at the one place that needs it (the request to the provider).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final

from sipbot.errors import ConfigError

# ${VAR}, ${VAR:-default}; $${ is a literal ${ (group 1 is then None)
ENV_REF_RE: Final = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MASK: Final = "****"


class Secret:
    """A string that masks itself.

    Args:
        value: the secret itself.
        source: what to show instead of it (e.g. ``${GEMINI_API_KEY}``); defaults to ``****``.
    """

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str | None = None) -> None:
        self._value = value
        self._source = source or MASK

    def reveal(self) -> str:
        """The secret value. Call it only where the value leaves the process."""
        return self._value

    @property
    def source(self) -> str:
        """The masked text shown instead of the value."""
        return self._source

    def __repr__(self) -> str:
        return f"Secret({self._source!r})"

    def __str__(self) -> str:
        return self._source

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


class EnvString(str):
    """A string expanded from ``${VAR}`` references; remembers the text it was written as.

    The config loader makes these so that a secret field can tell a value from the environment
    from one written into the file, and so that its repr does not leak the value.
    """

    template: str

    def __new__(cls, value: str, template: str) -> EnvString:
        self = super().__new__(cls, value)
        self.template = template
        return self

    def __repr__(self) -> str:
        return f"EnvString({self.template!r})"


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` references in ``text`` (``$${`` → ``${``).

    Returns ``text`` unchanged (a plain ``str``) when it has no reference, else an
    :class:`EnvString`.

    Raises:
        ConfigError: a referenced variable is not set and has no default (no file/line yet).
    """
    if "${" not in text:
        return text
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name is None:
            return "${"
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(f"environment variable {name} is not set")
            return default
        return value

    return EnvString(ENV_REF_RE.sub(substitute, text), text)


def to_secret(value: str | Secret) -> Secret:
    """A :class:`Secret` for ``value`` (an :class:`EnvString` keeps its ``${VAR}`` text)."""
    if isinstance(value, Secret):
        return value
    if isinstance(value, EnvString):
        return Secret(str.__str__(value), value.template)
    return Secret(value)
