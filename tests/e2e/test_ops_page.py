"""The live-calls page in a real headless Chromium (Selenium with Debian's chromedriver).

A SIPp call into an agent served by the OpenAI emulator: the page lists it, its transcript
lines appear, the caller's level meter moves; after BYE the call leaves the live list and shows
in recent calls with its recording, which the browser loads, and in the call records (the
records database) with its transcript. Screenshots are kept in the test's log directory
(``SIPBOT_E2E_LOG_DIR`` keeps those) and copied to ``artifacts/page/`` in the checkout (ignored by
git), the artifact path a run leaves behind.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipbot.emulators.script import EmulatorScript
from tests.e2e.conftest import StartServer
from tests.e2e.emulated import EmulatorThread, server_env, write_dialplan
from tests.e2e.peers import audio, sipp
from tests.e2e.peers.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
UI_WAIT_S = 20.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "page"
TURN = {"silence_ms": 500, "prefix_ms": 300}


def _screenshot(browser: Any, path: Path) -> None:
    """Save a PNG of the page at ``path`` and a copy under ``artifacts/page/``."""
    assert browser.save_screenshot(str(path)), f"no screenshot written to {path}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver  # a test dependency (pyproject: the test extra)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1100,800")
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, predicate: Any, what: str, timeout: float = UI_WAIT_S) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


def js(driver: Any, selector: str) -> list[str]:
    """The text of every element matching ``selector``, read in one go in the page (elements
    the page re-renders meanwhile cannot go stale under the test)."""
    script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent);"
    return list(driver.execute_script(script, selector))


@pytest.mark.requires_peers("sipp", "chromium", "chromedriver")
def test_the_page_shows_a_live_call_its_transcript_and_levels_then_its_record(
    browser: Any, sipbot_server: StartServer, peers_tmp: Path, speech: audio.Speech
) -> None:

    script = EmulatorScript(reply="echo", speed=1.0, reply_text="you said it, turn {turn}")
    with EmulatorThread("openai", script) as emu:
        recordings = peers_tmp / "recordings"
        recordings.mkdir()
        write_dialplan(
            peers_tmp / "sipbot.yaml",
            {
                "server": {"recordings_dir": str(recordings)},
                "agents": {"bot": emu.agent(turn=TURN, recording=True)},
                "routes": [{"name": "bot", "answer": "bot"}],
            },
        )
        port = free_port("tcp")
        url = f"http://127.0.0.1:{port}/"
        server = sipbot_server(
            "-c", str(peers_tmp / "sipbot.yaml"), "--http", f"127.0.0.1:{port}", env=server_env()
        )
        hold_s = speech.duration_s + 7.0
        scenario = sipp.uac_scenario(peers_tmp / "uac.xml", speech.ulaw, "PCMU", hold_s=hold_s)
        caller = sipp.start_uac(server.address, scenario, peers_tmp, timeout_s=hold_s + 30)
        try:
            browser.get(url)
            wait_for(browser, lambda d: js(d, "#calls .call .agent") == ["bot"], "a live call")
            levels = set()

            def meter_moved(driver: Any) -> bool:
                value = driver.execute_script(
                    "const m = document.querySelector('#calls .level-in'); return m && m.value;"
                )
                if value is not None:
                    levels.add(float(value))
                return len(levels) >= 3 and max(levels) > -50.0

            wait_for(browser, meter_moved, "the caller's level meter to move")
            lines = wait_for(
                browser,
                lambda d: [
                    t for t in js(d, "#calls .transcript li") if t.startswith("agent: you said it")
                ],
                "the agent's transcript line",
            )
            assert lines[0] == "agent: you said it, turn 1"
            assert "caller: caller turn 1" in js(browser, "#calls .transcript li")
            _screenshot(browser, peers_tmp / "live-calls.png")
        finally:
            result = caller.wait(hold_s + 40)
        result.assert_ok(1)
        wait_for(browser, lambda d: not js(d, "#calls .call"), "the call to leave the live list")
        cells = wait_for(
            browser, lambda d: js(d, "#recent tbody tr:first-child td"), "recent calls"
        )
        assert cells[1] == "bot"
        assert cells[4] == "bye-received"
        duration = wait_for(
            browser,
            lambda d: d.execute_script(
                "const a = document.querySelector('#recent audio');"
                "if (a.readyState === 0) { a.preload = 'auto'; a.load(); return 0; }"
                "return a.duration;"
            ),
            "the recording to load in the browser",
        )
        assert duration == pytest.approx(hold_s, abs=2.0)
        src = browser.execute_script("return document.querySelector('#recent audio').src;")
        with urllib.request.urlopen(src, timeout=5) as response:
            assert response.headers["Content-Type"] == "audio/wav"
            assert response.read(4) == b"RIFF"
        record = wait_for(
            browser,
            lambda d: js(d, "#records tbody tr:first-child td"),
            "the call in the records database",
        )
        assert record[1] == "bot"
        browser.execute_script("document.querySelector('#records tbody tr').click();")
        detail = wait_for(
            browser,
            lambda d: d.execute_script(
                "return document.getElementById('record-detail').textContent"
            ),
            "the record's transcript",
        )
        assert "agent: you said it, turn 1" in detail
        stored = browser.execute_script("return document.querySelector('#records audio').src;")
        with urllib.request.urlopen(stored, timeout=5) as response:  # by record id
            assert response.read(4) == b"RIFF"
        _screenshot(browser, peers_tmp / "recent-calls.png")
