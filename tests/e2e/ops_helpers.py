"""Helpers for the operations e2e tests: a server with its HTTP listener on a free port, JSON
reads of its API, and the echo dialplan with server settings of the test's choosing."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import SipbotServer, StartServer
from tests.e2e.peers.ports import free_port

HTTP_TIMEOUT_S = 5.0


def echo_config(path: Path, server: dict[str, Any] | None = None) -> Path:
    """The embedded default (one echo agent) with ``server`` settings."""
    config = {
        "server": server or {},
        "agents": {"echo": {"provider": "local", "local": {"mode": "echo"}}},
        "routes": [{"name": "default", "answer": "echo"}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_with_http(start: StartServer, *args: str) -> tuple[SipbotServer, str]:
    """A ``sipbot run`` with its HTTP listener on a free loopback port; (server, base URL)."""
    port = free_port("tcp")
    server = start("--http", f"127.0.0.1:{port}", *args)
    return server, f"http://127.0.0.1:{port}"


def get_json(url: str, token: str | None = None) -> Any:
    """GET ``url`` and parse its JSON body."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return str(response.read().decode())
