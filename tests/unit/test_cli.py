"""The command line: exit codes and the one-line config error (issue 2: exit 2)."""

from __future__ import annotations

from pathlib import Path

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
