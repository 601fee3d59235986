"""``sipbot calls list|show|export|erase`` on a real SQLite records file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from sipbot.cli import main
from sipbot.records import CallRow, LineRow
from sipbot.records.store import SqliteStore

T0 = 1_750_000_000.0


@pytest.fixture
def url(tmp_path: Path) -> str:
    store = SqliteStore(str(tmp_path / "records.sqlite3"))
    store.migrate()
    store.write(
        [
            CallRow(
                id="a1" + "0" * 30,
                call_id="c1@h",
                caller="+111",
                did="100",
                outcome="answered",
                started=T0,
                answered=T0 + 0.5,
                ended=T0 + 12.25,
                end_reason="bye",
                sip_status=200,
                agent="support",
                tools='[{"name": "lookup_order", "arguments": "{\\"order\\": 7}",'
                ' "output": "shipped", "started": null, "ended": null, "error": null}]',
                media='{"rtp_in": 600}',
                lines=(LineRow(0, T0 + 1, "agent", "Hello"), LineRow(1, None, "caller", "Hi")),
            ),
            CallRow(
                id="b2" + "0" * 30,
                call_id="c2@h",
                caller="+222",
                did="300",
                outcome="rejected",
                started=T0 + 60,
                ended=T0 + 60,
                end_reason="route",
                sip_status=486,
                sip_reason="Busy Here",
            ),
        ]
    )
    store.close()
    return f"sqlite:///{store.path}"


def test_list_shows_the_newest_first(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calls", "list", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STARTED",
        "CALLER",
        "DID",
        "AGENT",
        "OUTCOME",
        "END_REASON",
        "DURATION",
    ]
    assert lines[1].split() == [
        "b2" + "0" * 30,
        "2025-06-15T15:07:40.000+00:00",
        "+222",
        "300",
        "-",
        "rejected",
        "route",
        "0.0s",
    ]
    assert lines[2].split()[2:] == ["+111", "100", "support", "answered", "bye", "12.2s"]
    assert main(["calls", "list", "--url", url, "--limit", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_show_prints_the_record_tools_and_transcript(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calls", "show", "a1", "--url", url]) == 1  # a prefix needs 4 characters
    assert "no record 'a1'" in capsys.readouterr().err
    assert main(["calls", "show", "a100", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "caller:         +111\n" in out
    assert 'media:          {"rtp_in": 600}\n' in out
    assert 'tool lookup_order({"order": 7}) -> shipped\n' in out
    assert out.endswith("[2025-06-15T15:06:41.000+00:00] agent: Hello\n[-] caller: Hi\n")


def test_export_jsonl_and_csv(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calls", "export", "--url", url]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["call_id"] for r in records] == ["c1@h", "c2@h"]  # oldest first
    assert records[0]["tools"][0]["name"] == "lookup_order"
    assert records[0]["media"] == {"rtp_in": 600}
    assert records[0]["lines"][0] == {"seq": 0, "at": T0 + 1, "role": "agent", "text": "Hello"}
    assert main(["calls", "export", "--format", "csv", "--url", url]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["sip_status"] for r in rows] == ["200", "486"]
    assert rows[0]["transcript"] == "agent: Hello\ncaller: Hi"


def test_erase_removes_one_callers_records(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calls", "erase", "--caller", "+111", "--url", url]) == 0
    assert capsys.readouterr().out == (
        "erased 1 call records, 2 transcript lines and 0 recording files of caller +111\n"
    )
    assert main(["calls", "export", "--url", url]) == 0
    assert [json.loads(x)["caller"] for x in capsys.readouterr().out.splitlines()] == ["+222"]


def test_a_missing_database_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/none.sqlite3"
    assert main(["calls", "list", "--url", url]) == 1
    assert capsys.readouterr().err == f"sipbot calls: no records database at {url}\n"
    assert not (tmp_path / "none.sqlite3").exists()


def test_the_config_names_the_database(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"server:\n  records:\n    url: {url}\n")
    assert main(["calls", "list", "-c", str(config)]) == 0
    assert "+111" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  records:\n    url: mysql://u:secret@h/db\n")
    assert main(["calls", "list", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:3: server.records.url: a records URL is sqlite:///PATH")
    assert "secret" not in err
