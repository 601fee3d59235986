"""RTP port allocation: bind a UDP socket on a free even port of the configured range."""

from __future__ import annotations

import errno
import random
import socket

from sipbot.errors import PortRangeExhausted

_BIND_ERRORS = (errno.EADDRINUSE, errno.EACCES)


class PortAllocator:
    """Hands out RTP ports from ``[port_min, port_max]``.

    Even ports are used (RTP convention, RTCP would be the odd one above); if the range holds no
    even port, every port is a candidate. Allocation rotates through the range from a random start
    instead of reusing the lowest free port, so a port freed by one call is not handed to the next
    one while the old peer may still be sending to it.
    """

    def __init__(self, host: str, port_min: int, port_max: int) -> None:
        if not 0 < port_min <= port_max <= 65535:
            raise ValueError(f"invalid RTP port range {port_min}-{port_max}")
        self.host = host
        first_even = port_min + (port_min & 1)
        self._candidates = list(range(first_even, port_max + 1, 2)) or list(
            range(port_min, port_max + 1)
        )
        self._cursor = random.randrange(len(self._candidates))
        self._in_use: set[int] = set()
        self.port_min = port_min
        self.port_max = port_max

    @property
    def in_use(self) -> int:
        """Ports currently handed out."""
        return len(self._in_use)

    def bind(self) -> socket.socket:
        """A non-blocking UDP socket bound to a free port of the range.

        Raises:
            PortRangeExhausted: ``no free RTP port in MIN-MAX (N in use)``.
            OSError: binding failed for another reason than the port being taken.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        count = len(self._candidates)
        for _ in range(count):
            port = self._candidates[self._cursor]
            self._cursor = (self._cursor + 1) % count
            if port in self._in_use:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((self.host, port))
            except OSError as error:
                sock.close()
                if error.errno in _BIND_ERRORS:
                    continue
                raise
            sock.setblocking(False)
            self._in_use.add(port)
            return sock
        raise PortRangeExhausted(
            f"no free RTP port in {self.port_min}-{self.port_max} ({len(self._in_use)} in use)"
        )

    def release(self, port: int) -> None:
        """Return ``port`` to the pool (its socket must be closed by then)."""
        self._in_use.discard(port)
