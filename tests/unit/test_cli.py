"""The command line: exit codes and the one-line config error (issue 2: exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipbot.cli import main


def test_run_with_an_invalid_config_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('server:\n  sip:\n    listen: ["udp:nowhere:5060"]\n')
    assert main(["run", "-c", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"{bad}:3: server.sip.listen")


def test_run_with_a_bad_listen_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--listen", "127.0.0.1"]) == 2
    assert "command line" in capsys.readouterr().err


def test_check_prints_the_routing_table_of_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "answer echo" in out


def test_route_needs_name_value_headers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "--did", "100", "--header", "novalue"]) == 2
    assert "--header needs NAME=VALUE" in capsys.readouterr().err


def test_route_shows_the_agent(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "--did", "100", "--caller", "555"]) == 0
    assert "echo" in capsys.readouterr().out


def dial_args(*argv: str) -> Any:
    from sipbot.cli import _parser

    return _parser().parse_args(["dial", *argv])


def test_dial_arguments_become_the_post_body() -> None:
    from sipbot.cli import dial_request_fields

    args = dial_args(
        "+4930555", "--agent", "reminder", "--trunk", "carrier", "--caller-id", "+4930123",
        "--var", "name=Ada Lovelace", "--var", "when=tomorrow at 10=00", "--amd",
        "--ring-timeout", "25", "--status-callback", "http://127.0.0.1:9/s", "--wait",
    )  # fmt: skip
    assert dial_request_fields(args) == {
        "to": "+4930555",
        "agent": "reminder",
        "trunk": "carrier",
        "caller_id": "+4930123",
        "variables": {"name": "Ada Lovelace", "when": "tomorrow at 10=00"},
        "amd": True,
        "ring_timeout_s": 25.0,
        "status_callback": "http://127.0.0.1:9/s",
    }
    assert args.wait is True
    minimal = dial_args("sip:bob@127.0.0.1", "--agent", "a")
    assert dial_request_fields(minimal) == {"to": "sip:bob@127.0.0.1", "agent": "a"}
    assert minimal.url == "http://127.0.0.1:8089"
    assert dial_request_fields(dial_args("1", "--agent", "a", "--no-amd"))["amd"] is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--var", "novalue"], "sipbot dial: --var needs NAME=VALUE, not 'novalue'\n"),
        (["--var", "=x"], "sipbot dial: --var needs NAME=VALUE, not '=x'\n"),
        (["--ring-timeout", "0"], "sipbot dial: --ring-timeout must be > 0, not 0\n"),
    ],
)
def test_dial_with_bad_arguments_exits_2_before_asking_the_server(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    # the URL is never contacted: a closed port would fail with exit 1 instead
    code = main(["dial", "sip:x@127.0.0.1", "--agent", "a", "--url", "http://127.0.0.1:9", *argv])
    assert code == 2
    assert capsys.readouterr().err == message


def test_dial_without_an_agent_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dial", "sip:x@127.0.0.1"])
    assert exited.value.code == 2
    assert "the following arguments are required: --agent" in capsys.readouterr().err


def test_dial_states_print_with_code_and_reason() -> None:
    from sipbot.ops.client import format_dial_status

    assert format_dial_status({"state": "ringing", "sip_code": 180}) == "ringing 180"
    assert format_dial_status({"state": "busy", "sip_code": 486, "reason": "Busy Here"}) == (
        "busy 486 Busy Here"
    )
    assert format_dial_status({"state": "failed", "reason": "timeout"}) == "failed timeout"
