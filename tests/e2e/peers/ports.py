"""Free loopback ports for test peers, safe when several test processes share the machine.

How a port is chosen: a random port in :data:`PORT_RANGE`, which lies below the kernel's ephemeral
range (32768–60999 here), so nobody's ``bind(port=0)`` lands in it; the port must bind on
127.0.0.1 (UDP and/or TCP) right now, and we take an exclusive ``flock`` on
``/tmp/sipbot-test-ports/<port>.lock``. The lock is what makes concurrent pytest processes (xdist
workers, other sessions) never hand out the same port; it is held until :meth:`Reservation.release`
or until this process exits (the kernel drops flocks of dead processes, so nothing goes stale).
A peer binds the port after we return it, so a program outside this scheme could still race us
for it; the random choice over a 12,000-port range makes that unlikely, not impossible.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Proto = Literal["udp", "tcp", "both"]

PORT_RANGE = (20_000, 32_000)  # [low, high): below the ephemeral range, above common services
LOCK_DIR = Path(tempfile.gettempdir()) / "sipbot-test-ports"
MAX_ATTEMPTS = 500
# sipbot's RTP ports in tests: below the peers' range (20000-32000) and the kernel's ephemeral
# range, so a server never takes a port a test reserved for SIPp/baresip (servers running in
# parallel share it safely: the allocator binds, and skips ports in use).
E2E_RTP_PORTS = ("--rtp-ports", "10000-19999")
SIPP_MEDIA_BLOCK = 4  # SIPp binds -mp and -mp+2 (RTP and RTCP-ish): keep parallel blocks 4 apart

_TCP_LISTEN = "0A"  # /proc/net/tcp state code for LISTEN


@dataclass
class Reservation:
    """Ports held for this process. ``ports`` are consecutive when asked as a block."""

    ports: tuple[int, ...]
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def port(self) -> int:
        """The first (or only) port."""
        return self.ports[0]

    def release(self) -> None:
        """Give the ports back (idempotent). Only after the peers using them have exited."""
        for fd in self._fds:
            os.close(fd)  # closing the only descriptor drops the flock
        self._fds.clear()


# Reservations made by free_port()/free_port_block() live as long as this process.
_held: list[Reservation] = []


def reserve(count: int = 1, proto: Proto = "both", align: int = 1) -> Reservation:
    """Reserve ``count`` consecutive free ports on 127.0.0.1.

    Args:
        count: How many consecutive ports (1 for a single port; 4 for a SIPp media block).
        proto: Which protocols must be free on each port.
        align: The first port is a multiple of this (2 for an RTP range given to a peer that
            rounds its port down to an even one: from an odd first port it could take the port
            below the range).

    Raises:
        RuntimeError: No free block found after :data:`MAX_ATTEMPTS` tries.
    """
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    low, high = PORT_RANGE
    for _ in range(MAX_ATTEMPTS):
        first = random.randrange(low, high - count)
        first -= first % align
        fds = _lock_all(range(first, first + count))
        if fds is None:
            continue
        if all(_bindable(p, proto) for p in range(first, first + count)):
            return Reservation(tuple(range(first, first + count)), fds)
        for fd in fds:
            os.close(fd)
    raise RuntimeError(f"no {count} free consecutive {proto} ports in {low}-{high}")


def free_port(proto: Proto = "both") -> int:
    """One free port (UDP and TCP by default), reserved for the rest of this process."""
    res = reserve(1, proto)
    _held.append(res)
    return res.port


def free_port_block(size: int = SIPP_MEDIA_BLOCK, proto: Proto = "udp") -> int:
    """First port of ``size`` consecutive free ports, reserved for the rest of this process.

    Give SIPp ``-mp <first>``: it binds ``first`` and ``first + 2``.
    """
    res = reserve(size, proto)
    _held.append(res)
    return res.port


def _lock_all(ports: range) -> list[int] | None:
    fds: list[int] = []
    for port in ports:
        fd = os.open(LOCK_DIR / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            for held in fds:
                os.close(held)
            return None
        fds.append(fd)
    return fds


def _bindable(port: int, proto: Proto) -> bool:
    kinds = [socket.SOCK_DGRAM, socket.SOCK_STREAM]
    if proto == "udp":
        kinds = [socket.SOCK_DGRAM]
    elif proto == "tcp":
        kinds = [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    # A socket bound to 0.0.0.0 by someone with SO_REUSEADDR can hide from bind(): ask the kernel.
    return not any(is_bound(port, p) for p in (("udp", "tcp") if proto == "both" else (proto,)))


def is_bound(port: int, proto: Literal["udp", "tcp"]) -> bool:
    """Whether any local socket is bound to ``port`` (UDP) or listening on it (TCP), any address.

    Reads ``/proc/net/{udp,tcp}{,6}``: no probing bind, so it cannot disturb a peer that is about
    to bind the port.
    """
    want = f"{port:04X}"
    for suffix in ("", "6"):
        path = Path(f"/proc/net/{proto}{suffix}")
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines()[1:]:
                cols = line.split()
                if cols[1].rsplit(":", 1)[1] != want:
                    continue
                if proto == "udp" or cols[3] == _TCP_LISTEN:
                    return True
    return False


def wait_bound(port: int, proto: Literal["udp", "tcp"], timeout: float) -> bool:
    """Poll :func:`is_bound` every 20 ms for up to ``timeout`` seconds; return the last answer."""
    deadline = time.monotonic() + timeout
    while not is_bound(port, proto):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def udp_ports_of(pid: int) -> Iterator[int]:
    """Every local UDP port process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            yield int(fields[1].rsplit(":", 1)[1], 16)
