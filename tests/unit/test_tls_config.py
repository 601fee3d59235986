"""SIP over TLS: ``server.sip.tls`` keys, ``tls:`` listen addresses, URI → transport selection."""

from __future__ import annotations

import asyncio
import ssl
import textwrap
from pathlib import Path

import pytest

from sipbot.config import ListenAddress, load_config, parse_listen, parse_listen_option
from sipbot.errors import ConfigError
from sipbot.sip.compose import contact_value
from sipbot.sip.dns import SipResolver
from sipbot.sip.transport import TlsSettings, describe_error
from sipbot.sip.ua import select_transport

AGENT = "agents:\n  echo: {provider: local}\nroutes:\n  - {answer: echo}\n"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cert.pem").write_text("not read at load time\n")
    (tmp_path / "key.pem").write_text("not read at load time\n")
    (tmp_path / "ca.pem").write_text("not read at load time\n")
    return tmp_path


def load(tmp: Path, server: str) -> object:
    (tmp / "d.yaml").write_text(textwrap.dedent(server) + AGENT)
    return load_config("d.yaml", environ={})


def test_tls_keys_are_read_and_verify_defaults_to_true(in_tmp: Path) -> None:
    config = load(
        in_tmp,
        """\
        server:
          sip:
            listen: ['udp:127.0.0.1:5060', 'tls:127.0.0.1:5061']
            tls: {cert_file: cert.pem, key_file: key.pem, ca_file: ca.pem}
        """,
    )
    sip = config.server.sip  # type: ignore[attr-defined]
    assert sip.listen[1] == ListenAddress("tls", "127.0.0.1", 5061)
    assert (sip.tls.cert_file, sip.tls.key_file, sip.tls.ca_file) == (
        "cert.pem",
        "key.pem",
        "ca.pem",
    )
    assert sip.tls.verify is True


def test_verify_can_be_turned_off(in_tmp: Path) -> None:
    config = load(in_tmp, "server:\n  sip:\n    tls: {verify: false}\n")
    assert config.server.sip.tls.verify is False  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("server", "message"),
    [
        pytest.param(
            "server:\n  sip:\n    listen: ['tls:127.0.0.1:5061']\n",
            "d.yaml:2: server.sip: listening on tls: needs tls.cert_file and tls.key_file",
            id="listen-without-cert",
        ),
        pytest.param(
            "server:\n  sip:\n    tls: {cert_file: missing.pem}\n",
            "d.yaml:3: server.sip.tls: tls.cert_file 'missing.pem': no such file",
            id="missing-file",
        ),
        pytest.param(
            "server:\n  sip:\n    tls: {key_file: key.pem}\n",
            "d.yaml:3: server.sip.tls: tls.key_file needs tls.cert_file",
            id="key-without-cert",
        ),
        pytest.param(
            "server:\n  sip:\n    tls: {verfy: false}\n",
            "d.yaml:3: server.sip.tls.verfy: unknown key 'verfy'; did you mean 'verify'?",
            id="typo",
        ),
    ],
)
def test_bad_tls_settings_are_one_line(in_tmp: Path, server: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(in_tmp, server)
    assert str(info.value) == message


def test_listen_parses_tls_but_a_bare_host_port_stays_udp_and_tcp() -> None:
    assert parse_listen("tls:[::1]:5061") == ListenAddress("tls", "::1", 5061)
    assert [a.transport for a in parse_listen_option("127.0.0.1:5070")] == ["udp", "tcp"]
    assert parse_listen_option("tls:127.0.0.1:5071") == (ListenAddress("tls", "127.0.0.1", 5071),)


@pytest.mark.parametrize(
    ("scheme", "param", "default", "chosen"),
    [
        ("sip", None, "udp", "udp"),
        ("sip", "tls", "udp", "tls"),
        ("sip", "TLS", "udp", "tls"),
        ("sip", "tcp", "udp", "tcp"),
        ("sips", None, "udp", "tls"),
        ("sips", "tcp", "udp", "tls"),  # sips: over TCP is TLS (RFC 3261 §26.2)
        ("sip", None, "tls", "tls"),
    ],
)
def test_transport_selection(scheme: str, param: str | None, default: str, chosen: str) -> None:
    assert select_transport(scheme, param, default) == chosen


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:127.0.0.1", ("udp", 5060)),
        ("sip:127.0.0.1;transport=tls", ("tls", 5061)),
        ("sips:127.0.0.1", ("tls", 5061)),
        ("sips:127.0.0.1:5071", ("tls", 5071)),
        ("sip:127.0.0.1:5080;transport=tcp", ("tcp", 5080)),
    ],
)
def test_registrar_uri_resolves_to_transport_and_default_port(
    uri: str, expected: tuple[str, int]
) -> None:
    found = asyncio.run(SipResolver(["127.0.0.1"]).resolve(uri))  # numeric: no query is sent
    assert [(a.transport, a.port) for a in found] == [expected]


def test_our_contact_names_the_stream_transport() -> None:
    assert (
        contact_value("tls", "192.0.2.1", 5061, "bot") == "<sip:bot@192.0.2.1:5061;transport=tls>"
    )
    assert contact_value("udp", "192.0.2.1", 5060, "bot") == "<sip:bot@192.0.2.1:5060>"


def test_contexts_require_tls_1_2_and_verify_by_default() -> None:
    client = TlsSettings().client_context()
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    loose = TlsSettings(verify=False).client_context()
    assert loose.verify_mode == ssl.CERT_NONE
    assert not loose.check_hostname
    with pytest.raises(OSError, match="cert_file"):
        TlsSettings().server_context()


def test_a_verification_failure_is_named() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    assert describe_error(exc) == "TLS certificate not trusted: self-signed certificate"
    assert describe_error(TimeoutError()) == "connect timed out"
