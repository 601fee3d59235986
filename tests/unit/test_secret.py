"""Secrets mask themselves; ${VAR} expansion."""

from __future__ import annotations

import pytest

from sipbot.errors import ConfigError
from sipbot.secret import EnvString, Secret, expand_env, to_secret


def test_secret_masks() -> None:
    secret = Secret("AIza-123", "${GEMINI_API_KEY}")
    assert secret.reveal() == "AIza-123"
    assert repr(secret) == "Secret('${GEMINI_API_KEY}')"
    assert str(secret) == f"{secret}" == "${GEMINI_API_KEY}"
    assert repr(Secret("x")) == "Secret('****')"
    assert Secret("a") == Secret("a", "${A}")
    assert Secret("a") != Secret("b")
    assert not Secret("")


def test_expand_env() -> None:
    env = {"A": "1", "B": ""}
    assert expand_env("plain", env) == "plain"
    assert type(expand_env("plain", env)) is str
    assert expand_env("x${A}y${B}z", env) == "x1yz"
    assert expand_env("${MISSING:-d}", env) == "d"
    assert expand_env("${B:-d}", env) == "d"  # empty counts as unset for a default
    assert expand_env("$${A}", env) == "${A}"
    with pytest.raises(ConfigError) as info:
        expand_env("${MISSING}", env)
    assert str(info.value) == "environment variable MISSING is not set"


def test_to_secret_keeps_the_reference() -> None:
    value = expand_env("${A}", {"A": "k"})
    assert isinstance(value, EnvString)
    assert repr(to_secret(value)) == "Secret('${A}')"
    assert to_secret(value).reveal() == "k"
    assert repr(to_secret("literal")) == "Secret('****')"
