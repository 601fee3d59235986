"""Opening a provider session does no one-off work on the event loop (real SDKs, emulators).

Every call's audio shares the loop, so whatever the SDK does lazily at its first connection
(imports, a ``uname`` subprocess for its headers, building pydantic validators) stalled every
other call's RTP at a call start: 55-130 ms per first open on a busy 2-core host. The provider
does that work when it is made (before ``sipbot ready``). Timing is printed, not asserted (a
loaded CI machine makes any bound flaky); the assertions are the structural causes, checked in
a fresh interpreter (``session_open_probe``) because this one has long done the lazy work.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import certifi
import pytest

from sipbot.emulators.gemini import GeminiEmulator
from sipbot.emulators.openai import OpenAIEmulator
from sipbot.emulators.script import EmulatorScript
from sipbot.providers.gemini import GeminiProvider
from sipbot.providers.openai import OpenAIProvider

KEY = "test-key"
SCRIPT = EmulatorScript(speed=0, playback_wait=False, api_keys=frozenset({KEY}))
ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 120.0  # SDK imports alone take seconds on a loaded machine


async def probe(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), *sys.path]))}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.session_open_probe",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CHILD_TIMEOUT_S):
            out, err = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def check(kind: str, result: dict[str, Any]) -> None:
    print(f"{kind}: loop lateness per open (ms, 5 ms ticker): {result['late_ms']}")
    assert result["imports"] == [], "modules imported while a session opened"
    assert result["spawns"] == [], "subprocesses started while a session opened"
    assert result["built"] == [], "pydantic validators built while a session opened"
    assert len(result["late_ms"]) == 3


async def test_openai_open_does_no_lazy_work() -> None:
    async with OpenAIEmulator(SCRIPT, port=0) as emulator:
        check("openai", await probe("openai", KEY, emulator.base_url))


async def test_gemini_open_does_no_lazy_work() -> None:
    async with GeminiEmulator(SCRIPT, port=0) as emulator:
        assert emulator.ca_file is not None
        check("gemini", await probe("gemini", KEY, emulator.base_url, emulator.ca_file))


@pytest.mark.parametrize(
    ("url", "secure"),
    [(None, True), ("wss://realtime.example/v1", True), ("ws://127.0.0.1:9/v1", False)],
)
def test_openai_tls_context_made_once_per_provider(url: str | None, secure: bool) -> None:
    """websockets makes a default TLS context per wss:// connection (loading the CA bundle
    each time); the provider hands it one it made once."""
    provider = OpenAIProvider(KEY, websocket_base_url=url)
    tls = provider._tls
    assert isinstance(tls, ssl.SSLContext) if secure else tls is None
    if tls is not None:
        assert tls.verify_mode == ssl.CERT_REQUIRED
        assert tls.check_hostname


def test_providers_share_the_sdk_client_per_key() -> None:
    """A reload makes new providers on the loop; the SDK client (70-400 ms to make) is shared
    while the key and URL stay, and a new key gets a new client that uses it."""
    first = OpenAIProvider(KEY, websocket_base_url="ws://127.0.0.1:9/v1")
    again = OpenAIProvider(KEY, websocket_base_url="ws://127.0.0.1:9/v1")
    rotated = OpenAIProvider("new-key", websocket_base_url="ws://127.0.0.1:9/v1")
    assert again._client is first._client
    assert rotated._client is not first._client
    assert rotated._client.api_key == "new-key"
    assert OpenAIProvider(KEY)._tls is OpenAIProvider(KEY)._tls


def test_gemini_providers_share_the_sdk_client_per_key(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(Path(certifi.where()).read_bytes())
    url = "https://127.0.0.1:9"
    first = GeminiProvider(KEY, base_url=url, ca_file=str(ca_file))
    assert GeminiProvider(KEY, base_url=url, ca_file=str(ca_file))._client is first._client
    rotated = GeminiProvider("new-key", base_url=url, ca_file=str(ca_file))
    assert rotated._client is not first._client
    assert rotated._client._api_client.api_key == "new-key"
    stat = ca_file.stat()
    os.utime(ca_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten
    assert GeminiProvider(KEY, base_url=url, ca_file=str(ca_file))._client is not first._client
