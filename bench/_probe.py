"""What the shared machine did meanwhile: probe threads, and the kernel's CPU pressure (no test).

The benchmark runs on 2 cores shared with other sessions (a virtual machine). To tell a stall
of sipbot from a stall of the machine, :class:`MachineProbe` runs one thread per CPU, pinned to
it, in the benchmark process (idle otherwise); each wakes every 10 ms and records each time it
woke more than 15 ms late: while it was frozen, its CPU was not running what it should have.
:func:`cpu_pressure_us` reads the kernel's pressure-stall figure (``/proc/pressure/cpu``: time
in which some runnable task waited for a CPU).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PERIOD_S = 0.010
LATE_S = 0.015


class MachineProbe:
    """10 ms ticking threads, one pinned to each CPU; ``stalls`` are (start, end) epoch s."""

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(cpu,), name=f"probe-{cpu}", daemon=True)
            for cpu in sorted(os.sched_getaffinity(0))
        ]
        self._epoch = time.time() - time.monotonic()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[tuple[float, float]]:
        """Stop the threads (bounded); the stalls seen, in time order."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.stalls.sort()
        return self.stalls

    def _run(self, cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        due = time.monotonic() + PERIOD_S
        while not self._stop.is_set():
            time.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            if now - due > LATE_S:
                self.stalls.append((due + self._epoch, now + self._epoch))
            due += PERIOD_S
            if due < now:
                due = now + PERIOD_S


def cpu_pressure_us() -> int | None:
    """Microseconds in which some task waited for a CPU, since boot (None without PSI)."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(some.rsplit("total=", 1)[1])
