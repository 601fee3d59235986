"""The asyncio transports under the SIP core: UDP sockets, TCP and TLS listeners and connections.

A thin shell: it moves bytes between sockets and one callback, ``on_message(data, peer)``,
and sends what the core asks for with :meth:`Transports.send`. It knows nothing of SIP except
how to frame a TCP stream (:class:`~sipbot.sip.message.StreamFramer`).

Rules:

* Rule 1: a UDP datagram is one message; a TCP stream is cut into messages by Content-Length.
  A stream that cannot be framed is closed.
* Rule 2: a message for a TCP peer goes on the connection named in the :class:`Peer` when it is
  still open, else on any open connection to that host:port, else on a new connection (messages
  queue until it is up). A connection that fails is reported with ``on_error(peer)``.
* Rule 3: TCP connections idle for ``idle_timeout`` seconds are closed unless the core still
  uses them (``in_use()``).
* Rule 4: host names are resolved with the loop's resolver before sending; sending never blocks.
* Rule 5: TLS is TCP with Python's :mod:`ssl` (TLS 1.2 at least). An outgoing TLS connection
  verifies the server's certificate against ``ca_file`` (or the system's CAs) and its name —
  the host name the destination was resolved from (also sent as SNI), else its IP — unless
  ``verify`` is off. A failed handshake is one log line and ``on_error(peer)``, bounded by
  :data:`CONNECT_TIMEOUT_S`; :meth:`Transports.last_error` keeps its reason. A TCP and a TLS
  connection to the same host:port are never mixed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sipbot.errors import SipParseError
from sipbot.sip.legs import Peer
from sipbot.sip.message import StreamFramer

log = logging.getLogger(__name__)

OnMessage = Callable[[bytes, Peer], None]
OnError = Callable[[Peer], None]
IDLE_CHECK_S = 30.0
CONNECT_TIMEOUT_S = 10.0  # TCP connect + TLS handshake
STREAM_TRANSPORTS = ("tcp", "tls")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Certificates for SIP over TLS (``server.sip.tls``).

    Attributes:
        cert_file: our certificate chain (PEM); needed to listen on TLS.
        key_file: its private key (PEM); default: in ``cert_file``.
        ca_file: CA bundle that signs the servers we connect to; None: the system's CAs.
        verify: verify the server's certificate and name on outgoing connections.
    """

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    verify: bool = True

    def server_context(self) -> ssl.SSLContext:
        """The context of a TLS listener.

        Raises:
            OSError: no ``cert_file``, or the files cannot be read (``ssl.SSLError`` is one).
        """
        if not self.cert_file:
            raise OSError("listening on TLS needs server.sip.tls.cert_file (and key_file)")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file or None)
        return context

    def client_context(self) -> ssl.SSLContext:
        """The context of outgoing TLS connections (Rule 5).

        Raises:
            OSError, ssl.SSLError: the files cannot be read.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.verify:
            if self.ca_file:
                context.load_verify_locations(cafile=self.ca_file)
            else:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:  # a client certificate, for servers that ask (mutual TLS)
            context.load_cert_chain(self.cert_file, self.key_file or None)
        return context


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed connect or handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    return str(exc) or type(exc).__name__


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: Transports) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner.on_message(data, Peer("udp", str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)  # ICMP unreachable etc.: retransmission timers cover it


class _Tcp(asyncio.Protocol):
    def __init__(self, owner: Transports, transport: str = "tcp") -> None:
        self.owner = owner
        self.kind = transport  # "tcp" or "tls"
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.last_active = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.kind, host, port, next(self.owner.connection_ids))
        self.owner.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        assert self.transport is not None
        self.last_active = self.owner.loop.time()
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            log.info(
                "closing %s connection from %s:%s: %s",
                self.kind.upper(),
                self.peer.host,
                self.peer.port,
                exc,
            )
            self.transport.close()
            return
        for message in messages:
            self.owner.on_message(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_closed(self)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.last_active = self.owner.loop.time()
        self.transport.write(data)


class Transports:
    """All of a user agent's sockets.

    Args:
        on_message: called with each received message and where it came from.
        on_error: called when a message could not be sent to a peer (TCP connect failure).
        in_use: TCP connection ids the core still needs (not idle-closed).
        idle_timeout: seconds of silence before an unused TCP connection is closed.
        tls: certificates for TLS listeners and connections (Rule 5).
    """

    def __init__(
        self,
        on_message: OnMessage,
        on_error: OnError,
        in_use: Callable[[], set[int]],
        idle_timeout: float = 300.0,
        tls: TlsSettings | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.on_error = on_error
        self.on_closed: OnError | None = None  # a TCP connection ended (RFC 5626 flow failure)
        self.in_use = in_use
        self.idle_timeout = idle_timeout
        self.connection_ids = itertools.count(1)
        self.bound: list[tuple[str, str, int]] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: dict[int, _Tcp] = {}
        self._by_addr: dict[tuple[str, str, int], _Tcp] = {}
        self._connecting: dict[tuple[str, str, int], list[bytes]] = {}
        self.tls = tls or TlsSettings()
        self._client_context: ssl.SSLContext | None = None
        self._names: dict[tuple[str, int], str] = {}  # (IP, port) → host name (TLS: SNI)
        self._errors: dict[tuple[str, str, int], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_timer: asyncio.TimerHandle | None = None

    async def listen(self, transport: str, host: str, port: int) -> tuple[str, str, int]:
        """Bind one listener; return (transport, host, port) actually bound.

        Raises:
            ValueError: an unknown transport.
            OSError: the address cannot be bound.
        """
        if transport == "udp":
            udp, _ = await self.loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port)
            )
            self._udp.append(udp)
            sockname = udp.get_extra_info("sockname")
        elif transport == "tcp":
            server = await self.loop.create_server(
                lambda: _Tcp(self), host, port, reuse_address=True
            )
            self._servers.append(server)
            sockname = server.sockets[0].getsockname()
        elif transport == "tls":
            context = self.tls.server_context()
            server = await self.loop.create_server(
                lambda: _Tcp(self, "tls"),
                host,
                port,
                reuse_address=True,
                ssl=context,
                ssl_handshake_timeout=CONNECT_TIMEOUT_S,
            )
            self._servers.append(server)
            sockname = server.sockets[0].getsockname()
        else:
            raise ValueError(f"unknown transport {transport!r}")
        bound = (transport, str(sockname[0]), int(sockname[1]))
        self.bound.append(bound)
        return bound

    def remember_name(self, ip: str, port: int, name: str) -> None:
        """``name`` resolved to ``ip``: verify a TLS server at ip:port as ``name`` (Rule 5)."""
        if not is_ip(name):
            if len(self._names) > 4096:
                self._names.clear()
            self._names[(ip, port)] = name

    def last_error(self, peer: Peer) -> str | None:
        """Why the last connection to ``peer`` (transport, host, port) failed, if it did."""
        return self._errors.get((peer.transport, peer.host, peer.port))

    def send(self, data: bytes, peer: Peer) -> None:
        """Send one message (see Rule 2 and Rule 4)."""
        if not is_ip(peer.host):
            self._spawn(self._resolve_and_send(data, peer))
        elif peer.transport == "udp":
            self._send_udp(data, peer)
        else:
            self._send_tcp(data, peer)

    def _send_udp(self, data: bytes, peer: Peer) -> None:
        if not self._udp:
            log.warning("no UDP socket to send to %s:%s", peer.host, peer.port)
            return
        family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
        udp = next(
            (u for u in self._udp if u.get_extra_info("socket").family == family), self._udp[0]
        )
        udp.sendto(data, (peer.host, peer.port))

    def _send_tcp(self, data: bytes, peer: Peer) -> None:
        conn = self._conns.get(peer.connection) if peer.connection is not None else None
        if conn is not None and conn.kind != peer.transport:
            conn = None
        key = (peer.transport, peer.host, peer.port)
        if conn is None:
            conn = self._by_addr.get(key)
        if conn is not None:
            conn.write(data)
            return
        if key in self._connecting:
            self._connecting[key].append(data)
            return
        self._connecting[key] = [data]
        self._spawn(self._connect(peer))

    async def _connect(self, peer: Peer) -> None:
        key = (peer.transport, peer.host, peer.port)
        kind = "tls" if peer.transport == "tls" else "tcp"
        name = self._names.get((peer.host, peer.port), peer.host)
        try:
            if kind == "tls":
                if self._client_context is None:
                    self._client_context = self.tls.client_context()
                connecting = self.loop.create_connection(
                    lambda: _Tcp(self, "tls"),
                    peer.host,
                    peer.port,
                    ssl=self._client_context,
                    server_hostname=name,
                    ssl_handshake_timeout=CONNECT_TIMEOUT_S,
                )
            else:
                connecting = self.loop.create_connection(lambda: _Tcp(self), peer.host, peer.port)
            _, protocol = await asyncio.wait_for(connecting, CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = describe_error(exc)
            where = (
                f"{name}:{peer.port}" if name == peer.host else f"{name} ({peer.host}:{peer.port})"
            )
            log.warning("%s connect to %s failed: %s", kind.upper(), where, reason)
            self._errors[key] = reason
            self._connecting.pop(key, None)
            self.on_error(peer)
            return
        self._errors.pop(key, None)
        for data in self._connecting.pop(key, []):
            protocol.write(data)

    async def _resolve_and_send(self, data: bytes, peer: Peer) -> None:
        try:
            infos = await self.loop.getaddrinfo(peer.host, peer.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.info("cannot resolve %s: %s", peer.host, exc)
            self.on_error(peer)
            return
        host = str(infos[0][4][0])
        self.remember_name(host, peer.port, peer.host)
        self.send(data, Peer(peer.transport, host, peer.port, peer.connection))

    def connection_opened(self, conn: _Tcp) -> None:
        assert conn.peer is not None
        conn.last_active = self.loop.time()
        self._conns[conn.peer.connection or 0] = conn
        self._by_addr[(conn.kind, conn.peer.host, conn.peer.port)] = conn
        self._arm_idle_check()

    def connection_closed(self, conn: _Tcp) -> None:
        if conn.peer is None:
            return
        self._conns.pop(conn.peer.connection or 0, None)
        key = (conn.kind, conn.peer.host, conn.peer.port)
        if self._by_addr.get(key) is conn:
            del self._by_addr[key]
        if self.on_closed is not None:
            self.on_closed(conn.peer)

    def _arm_idle_check(self) -> None:
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(IDLE_CHECK_S, self._close_idle)

    def _close_idle(self) -> None:
        self._idle_timer = None
        cutoff = self.loop.time() - self.idle_timeout
        used = self.in_use()
        for conn_id, conn in list(self._conns.items()):
            if conn.last_active < cutoff and conn_id not in used and conn.transport is not None:
                conn.transport.close()
        self._arm_idle_check()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Close every socket and connection."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for task in list(self._tasks):
            task.cancel()
        for udp in self._udp:
            udp.close()
        for server in self._servers:
            server.close()
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._udp.clear()
        self._servers.clear()
