"""Several ``sipbot run`` workers behind Kamailio's dispatcher (the deployment in deploy/).

Calls are spread round robin over two workers; when one worker stops (SIGTERM: it BYEs its calls
and exits), the dispatcher's OPTIONS probing marks it inactive and new calls all reach the other.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.peers.kamailio import start_dispatcher
from tests.e2e.peers.sipp import run_uac
from tests.e2e.peers.sipp_scenarios import uac_scenario

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.requires_peers("kamailio", "sipp"),
]

INACTIVE_WITHIN_S = 10.0


def answered(server) -> int:
    return len(re.findall(r"answered by agent", server.log()))


def test_dispatcher_spreads_calls_and_fails_over(sipbot_server, peers_tmp: Path, speech):
    workers = [sipbot_server(), sipbot_server()]
    kamailio = start_dispatcher(peers_tmp, [f"sip:{w.address}" for w in workers])
    scenario = uac_scenario(peers_tmp / "uac.xml", speech.ulaw, "PCMU", hold_s=1.0)

    result = run_uac(kamailio.address, scenario, peers_tmp, calls=10, rate=10, timeout_s=40)
    result.assert_ok(10)
    assert [answered(w) for w in workers] == [5, 5]

    assert workers[0].process.stop() == 0  # SIGTERM: a clean exit
    deadline = time.monotonic() + INACTIVE_WITHIN_S
    while time.monotonic() < deadline:
        states = kamailio.dispatcher_states()
        if states.get(f"sip:{workers[0].address}", "").startswith("I"):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the stopped worker was not marked inactive: {kamailio.dispatcher_states()}")
    result = run_uac(
        kamailio.address, scenario, peers_tmp, calls=4, rate=10, timeout_s=40, name="sipp-uac-2"
    )
    result.assert_ok(4)
    assert answered(workers[1]) == 9


def test_the_deployed_dispatcher_config_is_valid(peers_tmp: Path):
    """deploy/kamailio-dispatcher.cfg passes ``kamailio -c`` once its placeholders are filled."""
    source = Path(__file__).resolve().parents[2] / "deploy" / "kamailio-dispatcher.cfg"
    listing = peers_tmp / "dispatcher.list"
    listing.write_text("1 sip:127.0.0.1:5081 0 0\n")
    config = (
        source.read_text()
        .replace("PUBLIC_IP", "127.0.0.1")
        .replace("/etc/kamailio/dispatcher.list", str(listing))
    )
    # loopback twice would clash in the check: keep one listen line per transport
    config = config.replace("listen=udp:127.0.0.1:5060\n", "", 1)
    path = peers_tmp / "kamailio.cfg"
    path.write_text(config)
    run_dir = Path(tempfile.mkdtemp(prefix="kam-check-"))
    try:
        result = subprocess.run(
            ["kamailio", "-c", "-f", str(path), "-Y", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
