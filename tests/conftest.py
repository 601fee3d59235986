"""Rules for the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Tests that load the machine (hundreds of calls, floods, fuzzing) or hold their calls' cadence to
# a bound: ``scripts/test`` runs them one at a time after the rest of the suite has run on two
# workers (pytest-xdist), so no other test shares the cores with them. An entry is a file (all its
# tests) or a test (all its parameters).
SOLO = frozenset(
    {
        "tests/e2e/test_load_e2e.py",
        "tests/e2e/test_faults_e2e.py",
        "tests/e2e/test_hostile_input_e2e.py",
        "tests/e2e/test_media_robustness.py",
        "tests/fuzz/test_fuzz_bounded.py",
        "tests/e2e/test_call_path.py::test_sipp_hears_its_speech_echoed_on_a_steady_stream",
        "tests/e2e/test_call_path.py::test_20_concurrent_sipp_calls_all_hear_their_echo",
        "tests/e2e/test_call_path.py::test_loopback_mode_sends_the_audio_straight_back",
        # pjsua2 records on its null sound device's clock, which slips under CPU contention
        "tests/e2e/test_call_path.py::test_pjsua2_callers_hear_the_echo_and_bye_works_both_ways",
        "tests/e2e/test_ops_e2e.py::"
        "test_a_burst_over_max_calls_gets_503_with_retry_after_and_the_admitted_keep_cadence",
        "tests/e2e/test_ops_e2e.py::test_the_media_keeps_its_cadence_while_the_http_api_is_busy",
        "tests/e2e/test_rfc4475_server.py::"
        "test_a_malformed_message_barrage_leaves_a_live_call_and_the_answers_intact",
        "tests/e2e/test_tools_e2e.py::test_outbound_rtp_keeps_its_cadence_while_a_slow_tool_runs",
        "tests/e2e/test_sip_signalling.py::test_200_calls_at_50_per_second",
        "tests/e2e/test_outbound_e2e.py::test_cps_and_concurrency_limits_hold_on_the_wire",
    }
)


def is_solo(nodeid: str) -> bool:
    """Whether a test (its pytest node id) is in :data:`SOLO`."""
    path, _, rest = nodeid.partition("::")
    name = rest.partition("[")[0]
    return path in SOLO or f"{path}::{name}" in SOLO


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "solo: runs alone, after the parallel part of scripts/test (see SOLO)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_solo(item.nodeid):
            item.add_marker(pytest.mark.solo)


@pytest.fixture(autouse=True, scope="session")
def _own_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every sipbot the tests start keeps its default data (call records) in the run's tmp dir.

    Without this, a server started with no ``data_dir`` writes ``~/.local/share/sipbot`` of whoever
    runs the tests, and a schema left there by another checkout makes it refuse to start.
    """
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved
