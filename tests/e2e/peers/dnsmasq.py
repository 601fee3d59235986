"""dnsmasq in the foreground on a free loopback port, serving SRV/NAPTR/A records for tests.

Only the zone ``test`` is answered (``--local=/test/``: other names under it are NXDOMAIN, not
REFUSED); no upstream servers, no /etc/hosts. Ready within ~20 ms of start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.peers.ports import free_port, wait_bound
from tests.e2e.peers.process import ManagedProcess, PeerError

DNSMASQ = "dnsmasq"
READY_TIMEOUT_S = 10.0


@dataclass
class Dnsmasq:
    process: ManagedProcess
    port: int

    def stop(self) -> int:
        return self.process.stop(timeout=5.0)


def start(
    log_dir: Path,
    *,
    hosts: dict[str, str],
    srv: Sequence[tuple[str, str, int, int, int]] = (),
    naptr: Sequence[tuple[str, int, int, str, str]] = (),
) -> Dnsmasq:
    """Start dnsmasq with these records.

    Args:
        hosts: name → IPv4 address (A records).
        srv: (service name, target, port, priority, weight).
        naptr: (name, order, preference, service such as ``SIP+D2U``, replacement SRV name).
    """
    port = free_port("both")
    argv = [
        DNSMASQ,
        "--no-daemon",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--local=/test/",
        "--log-queries",
        "--log-facility=-",
        "--user=root",
        "--pid-file=",
    ]
    argv += [f"--host-record={name},{ip}" for name, ip in hosts.items()]
    argv += [f"--srv-host={n},{t},{p},{pri},{w}" for n, t, p, pri, w in srv]
    argv += [f"--naptr-record={n},{o},{pref},s,{svc},,{r}" for n, o, pref, svc, r in naptr]
    proc = ManagedProcess.start("dnsmasq", argv, log_dir)
    if not wait_bound(port, "udp", READY_TIMEOUT_S):
        proc.stop(timeout=2.0)
        raise PeerError(f"dnsmasq did not listen on {port}:\n{proc.logs()[-2000:]}")
    return Dnsmasq(proc, port)
