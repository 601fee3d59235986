"""RTP port allocation."""

from __future__ import annotations

import random
import socket

import pytest

from sipbot.errors import PortRangeExhausted
from sipbot.media.ports import PortAllocator


def test_even_ports_rotate_and_taken_ports_are_skipped() -> None:
    base = random.randrange(30_000, 60_000, 2)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        allocator = PortAllocator("127.0.0.1", base, base + 7)
        allocator._cursor = 0
        squatter.bind(("127.0.0.1", base + 2))  # someone else holds base+2
        socks = [allocator.bind() for _ in range(3)]
        ports = [s.getsockname()[1] for s in socks]
        assert ports == [base, base + 4, base + 6]
        assert allocator.in_use == 3
        with pytest.raises(PortRangeExhausted) as caught:
            allocator.bind()
        assert str(caught.value) == f"no free RTP port in {base}-{base + 7} (3 in use)"
        socks[0].close()
        allocator.release(base)
        again = allocator.bind()
        assert again.getsockname()[1] == base
        again.close()
        for sock in socks[1:]:
            sock.close()
    finally:
        squatter.close()


def test_odd_single_port_range_and_invalid_range() -> None:
    allocator = PortAllocator("127.0.0.1", 40001, 40001)
    assert allocator._candidates == [40001]
    with pytest.raises(ValueError, match="invalid RTP port range 5-4"):
        PortAllocator("127.0.0.1", 5, 4)
