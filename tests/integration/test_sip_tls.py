"""SIP over TLS on loopback with Python's ssl on both sides: SNI and name verification, the
TLS Via/Contact, refusal of an untrusted certificate without a hang, responses on the
connection the request came on. Certificates: a throw-away CA (sipbot.emulators.tls)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import pytest

from sipbot.emulators.tls import LocalCertificate
from sipbot.errors import RequestFailed
from sipbot.sip.transport import TlsSettings
from sipbot.sip.ua import ServerCall, SipSettings, UserAgent

OFFER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
OFFER += b"m=audio 40000 RTP/AVP 0\r\n"
REFUSED_WITHIN_S = 2.0


@pytest.fixture
def certificate() -> Iterator[LocalCertificate]:
    cert = LocalCertificate()
    yield cert
    cert.cleanup()


class RawTlsServer:
    """A TLS listener that records the SNI and the first message, then closes."""

    def __init__(self, cert: LocalCertificate) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert.cert_file, cert.key_file)
        self.context.sni_callback = self._sni
        self.server_names: list[str | None] = []
        self.received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def _sni(self, _sock: object, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readuntil(b"\r\n\r\n")
        if not self.received.done():
            self.received.set_result(data)
        writer.close()


async def test_sni_and_the_name_come_from_the_uri_host(certificate: LocalCertificate) -> None:
    raw = RawTlsServer(certificate)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=raw.context)
    port = server.sockets[0].getsockname()[1]
    ua = UserAgent(
        SipSettings(
            listen=(("udp", "127.0.0.1", 0),), tls=TlsSettings(ca_file=certificate.ca_file)
        ),
        lambda call: None,
    )
    await ua.start()
    try:
        call = asyncio.ensure_future(ua.call(f"sip:bot@localhost:{port};transport=tls", OFFER))
        request = await asyncio.wait_for(raw.received, 5.0)
        call.cancel()
    finally:
        await ua.close(timeout=0.5)
        server.close()
    assert raw.server_names == ["localhost"]  # SNI: the host name, verified against DNS:localhost
    head = request.decode()
    assert head.startswith(f"INVITE sip:bot@localhost:{port};transport=tls SIP/2.0\r\n")
    assert "\r\nVia: SIP/2.0/TLS 127.0.0.1:" in head
    assert ";transport=tls>" in head.split("\r\nContact: ", 1)[1].split("\r\n", 1)[0]


async def test_a_sips_call_over_tls_is_answered_on_its_connection(
    certificate: LocalCertificate,
) -> None:
    calls: list[ServerCall] = []

    def answer(call: ServerCall) -> None:
        calls.append(call)
        call.reject(486)

    tls = TlsSettings(certificate.cert_file, certificate.key_file)
    server = UserAgent(SipSettings(listen=(("tls", "127.0.0.1", 0),), tls=tls), answer)
    await server.start()
    port = server.bound[0][2]
    client = UserAgent(
        SipSettings(
            listen=(("udp", "127.0.0.1", 0),), tls=TlsSettings(ca_file=certificate.ca_file)
        ),
        lambda call: None,
    )
    await client.start()
    try:
        with pytest.raises(RequestFailed, match="486"):
            await asyncio.wait_for(client.call(f"sips:bot@127.0.0.1:{port}", OFFER), 5.0)
    finally:
        await client.close(timeout=0.5)
        await server.close(timeout=0.5)
    assert len(calls) == 1
    transport, _host, source_port = calls[0].source
    assert transport == "tls"
    assert source_port != port  # the client's own end of the connection: the 486 went back on it


async def test_an_untrusted_certificate_is_refused_at_once(
    certificate: LocalCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    tls = TlsSettings(certificate.cert_file, certificate.key_file)
    server = UserAgent(SipSettings(listen=(("tls", "127.0.0.1", 0),), tls=tls), lambda c: None)
    await server.start()
    port = server.bound[0][2]
    other = LocalCertificate()  # a CA that did not sign the server's certificate
    client = UserAgent(
        SipSettings(listen=(("udp", "127.0.0.1", 0),), tls=TlsSettings(ca_file=other.ca_file)),
        lambda call: None,
    )
    await client.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(RequestFailed):
            await asyncio.wait_for(
                client.call(f"sip:bot@127.0.0.1:{port};transport=tls", OFFER), 10.0
            )
    finally:
        await client.close(timeout=0.5)
        await server.close(timeout=0.5)
        other.cleanup()
    assert loop.time() - started < REFUSED_WITHIN_S
    lines = [r.getMessage() for r in caplog.records if "TLS connect" in r.getMessage()]
    assert lines == [
        f"TLS connect to 127.0.0.1:{port} failed: TLS certificate not trusted: "
        "self-signed certificate in certificate chain"
    ]


async def test_verify_false_accepts_any_certificate(certificate: LocalCertificate) -> None:
    tls = TlsSettings(certificate.cert_file, certificate.key_file)
    server = UserAgent(
        SipSettings(listen=(("tls", "127.0.0.1", 0),), tls=tls), lambda call: call.reject(486)
    )
    await server.start()
    port = server.bound[0][2]
    client = UserAgent(
        SipSettings(listen=(("udp", "127.0.0.1", 0),), tls=TlsSettings(verify=False)),
        lambda call: None,
    )
    await client.start()
    try:
        with pytest.raises(RequestFailed, match="486"):
            await asyncio.wait_for(
                client.call(f"sip:bot@127.0.0.1:{port};transport=tls", OFFER), 5.0
            )
    finally:
        await client.close(timeout=0.5)
        await server.close(timeout=0.5)
