"""What the shared machine did meanwhile: a probe thread, and the kernel's CPU pressure (no test).

The benchmark runs on 2 cores shared with other sessions. To tell a stall of sipbot from a stall
of the machine, :class:`MachineProbe` runs a thread in the benchmark process (idle otherwise)
that wakes every 10 ms and records each time it woke more than 15 ms late: while it was frozen,
any process could have been. :func:`cpu_pressure_us` reads the kernel's pressure-stall figure
(``/proc/pressure/cpu``: time in which some runnable task waited for a CPU).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

PERIOD_S = 0.010
LATE_S = 0.015


class MachineProbe:
    """A 10 ms ticking thread; ``stalls`` are (start, end) epoch seconds it could not run."""

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-probe", daemon=True)
        self._epoch = time.time() - time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[tuple[float, float]]:
        """Stop the thread (bounded); the stalls seen."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        return self.stalls

    def _run(self) -> None:
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
