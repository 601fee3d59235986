"""Several ``sipbot run`` workers behind Kamailio's dispatcher, for ``bench_workers.py`` (no test).

* **Workers**: :class:`~bench._calls.BenchServer` processes on free SIP ports, each with its own
  slice of the benchmark's RTP range (10000-19999 cut in W equal parts) and its own HTTP port,
  sharing one config and one data directory (call records), as the ``sipbot@.service`` units do.
* **Kamailio**: ``deploy/kamailio-dispatcher.cfg`` itself — the routing we ship — with its
  placeholders filled (``PUBLIC_IP`` → 127.0.0.1, port 5060 → a free port, the list file) and the
  control socket in a short run directory. ``dispatch="load"`` changes round robin
  (``ds_select_dst("1", "4")``) into call-load distribution (algorithm 10: the worker with the
  fewest active calls, ``ds_hash_size`` set, a ``duid`` per worker, ``ds_load_update()`` on BYE).
  Each anchor must appear exactly once, so an edit of the shipped file that breaks the
  substitution stops the benchmark instead of silently measuring something else.
* **CPU of Kamailio**: the sum over its process tree (the main process and the children it forks
  at start: UDP/TCP receivers, timers, the dispatcher's pinger, ctl). For the whole run,
  ``/proc/PID/schedstat`` (nanoseconds): Kamailio's work for a run is only a few clock ticks.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._calls import ROOT, BenchServer, status_mb
from tests.e2e.peers.kamailio import KAMAILIO, Kamailio
from tests.e2e.peers.ports import free_port, wait_bound
from tests.e2e.peers.process import ManagedProcess, PeerError

DEPLOY_CONFIG = ROOT / "deploy" / "kamailio-dispatcher.cfg"
RTP_FIRST, RTP_LAST = 10000, 19999  # bench._calls.SERVER_RTP_PORTS, shared out among workers
DISPATCH = ("rr", "load")
READY_TIMEOUT_S = 15.0
ACTIVE_TIMEOUT_S = 10.0
KAMAILIO_IDLE_S = 3.0  # Kamailio's own CPU rate (timers, OPTIONS probes) is measured this long


def rtp_slices(workers: int) -> list[str]:
    """``workers`` disjoint ``MIN-MAX`` RTP ranges (even-sized, even starts) in 10000-19999."""
    size = ((RTP_LAST - RTP_FIRST + 1) // workers) & ~1
    if size < 4:
        raise ValueError(f"{workers} workers do not fit in RTP ports {RTP_FIRST}-{RTP_LAST}")
    return [f"{RTP_FIRST + i * size}-{RTP_FIRST + (i + 1) * size - 1}" for i in range(workers)]


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"{DEPLOY_CONFIG.name}: expected {old!r} exactly once")
    return text.replace(old, new)


def dispatcher_config(port: int, list_file: Path, run_dir: Path, dispatch: str) -> str:
    """deploy/kamailio-dispatcher.cfg for 127.0.0.1:``port`` (see the module docstring)."""
    if dispatch not in DISPATCH:
        raise ValueError(f"dispatch must be one of {DISPATCH}, not {dispatch!r}")
    text = DEPLOY_CONFIG.read_text()
    text = _replace_once(text, "listen=udp:127.0.0.1:5060\n", "")  # PUBLIC_IP is 127.0.0.1 here
    text = text.replace("PUBLIC_IP", "127.0.0.1").replace(":5060\n", f":{port}\n")
    text = _replace_once(
        text, '"list_file", "/etc/kamailio/dispatcher.list"', f'"list_file", "{list_file}"'
    )
    params = f'modparam("ctl", "binrpc", "unix:{run_dir}/kamailio_ctl")\n'
    if dispatch == "load":
        params += 'modparam("dispatcher", "ds_hash_size", 9)\n'
        text = _replace_once(text, 'ds_select_dst("1", "4")', 'ds_select_dst("1", "10")')
        text = _replace_once(
            text,
            "    if (loose_route()) {\n",
            '    if (loose_route()) {\n        if (is_method("BYE")) ds_load_update();\n',
        )
    first = text.index("\nmodparam(") + 1
    return text[:first] + params + text[first:]


def start_dispatcher(log_dir: Path, backends: Sequence[str], dispatch: str) -> Kamailio:
    """Kamailio with the deployed dispatcher config in front of ``backends`` (``host:port``).

    Returns once it listens and every backend is active (probed with OPTIONS).

    Raises:
        PeerError: the config was rejected, or Kamailio or a backend did not get ready in time.
    """
    port = free_port("both")
    run_dir = Path(tempfile.mkdtemp(prefix="kam-"))  # a unix socket path must stay short
    list_file = log_dir / "dispatcher.list"
    attrs = [
        f" duid=w{i};maxload=100000" if dispatch == "load" else "" for i in range(len(backends))
    ]
    list_file.write_text(
        "".join(f"1 sip:{b} 0 0{a}\n" for b, a in zip(backends, attrs, strict=True))
    )
    config = log_dir / "kamailio-bench.cfg"
    config.write_text(dispatcher_config(port, list_file, run_dir, dispatch))
    argv = [KAMAILIO, "-f", str(config), "-Y", str(run_dir), "-w", str(run_dir), "-DD", "-E"]
    process = ManagedProcess.start("kamailio", [*argv, "-m", "64", "-M", "8"], log_dir)
    kamailio = Kamailio(process, port, run_dir, config)
    try:
        ctl = run_dir / "kamailio_ctl"
        deadline = time.monotonic() + READY_TIMEOUT_S
        if not wait_bound(port, "udp", READY_TIMEOUT_S):
            raise PeerError(f"kamailio did not listen on {port}:\n{process.logs()[-3000:]}")
        while not ctl.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        deadline = time.monotonic() + ACTIVE_TIMEOUT_S
        states = kamailio.dispatcher_states()
        while not all(states.get(f"sip:{b}", "").startswith("A") for b in backends):
            if time.monotonic() >= deadline:
                raise PeerError(f"workers not active in Kamailio's dispatcher: {states}")
            time.sleep(0.2)
            states = kamailio.dispatcher_states()
    except BaseException:
        kamailio.stop()
        raise
    return kamailio


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


class WorkerPool:
    """W workers behind one Kamailio; a :class:`~bench._calls.CallTarget` for ``run_calls``.

    Calls go to Kamailio's address. ``pid`` is worker 0 (``run_calls`` counts it as "server");
    :meth:`other_pids` names the other workers ``worker1``... and Kamailio's processes
    ``kamailio-PID``, so that every process is counted once and the caller can add them up.
    ``kamailio_idle_cores``: Kamailio's CPU with no call, measured for KAMAILIO_IDLE_S once the
    workers are active in its dispatcher (timers, OPTIONS probes).
    """

    def __init__(
        self,
        workdir: Path,
        config: Path,
        name: str,
        workers: int,
        extra: Sequence[str],
        dispatch: str,
        nice: int = 0,
    ) -> None:
        self.workers: list[BenchServer] = []
        self.kamailio: Kamailio | None = None
        try:
            for i, ports in enumerate(rtp_slices(workers)):
                http = f"127.0.0.1:{free_port('tcp')}"
                argv = [*extra, "--rtp-ports", ports, "--http", http]
                self.workers.append(BenchServer(workdir, config, f"{name}-w{i}", argv, nice))
            kam_dir = workdir / f"{name}-kamailio"
            kam_dir.mkdir(parents=True, exist_ok=True)
            self.kamailio = start_dispatcher(kam_dir, [w.address for w in self.workers], dispatch)
            cpu, t0 = self.kamailio_cpu_s(), time.monotonic()
            time.sleep(KAMAILIO_IDLE_S)
            self.kamailio_idle_cores = (self.kamailio_cpu_s() - cpu) / (time.monotonic() - t0)
        except BaseException:
            self.stop()
            raise
        self.idle_rss_mb = max(w.idle_rss_mb for w in self.workers)

    @property
    def address(self) -> str:
        assert self.kamailio is not None
        return self.kamailio.address

    @property
    def pid(self) -> int:
        return self.workers[0].pid

    def kamailio_pids(self) -> list[int]:
        assert self.kamailio is not None
        return process_tree(self.kamailio.process.pid)

    def other_pids(self) -> dict[str, int]:
        pids = {f"worker{i}": w.pid for i, w in enumerate(self.workers) if i}
        pids.update({f"kamailio-{pid}": pid for pid in self.kamailio_pids()})
        return pids

    def kamailio_cpu_s(self) -> float:
        """CPU seconds used so far by Kamailio's processes (each is single-threaded)."""
        total = 0
        for pid in self.kamailio_pids():
            try:
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
        return total / 1e9

    def peak_rss_mb(self) -> list[float]:
        return [status_mb(w.pid, "VmHWM") for w in self.workers]

    def cdrs(self) -> list[dict[str, Any]]:
        return [cdr for w in self.workers for cdr in w.cdrs()]

    def gc_pauses(self, since: float) -> dict[str, Any]:
        each = [w.gc_pauses(since) for w in self.workers]
        return {
            "gen2": sum(g["gen2"] for g in each),
            "max_ms": max(g["max_ms"] for g in each),
            "over_10ms": sum(g["over_10ms"] for g in each),
        }

    def stop(self) -> None:
        """Kamailio first (no new calls), then every worker; each by its PID, bounded."""
        if self.kamailio is not None:
            self.kamailio.stop()
        for worker in self.workers:
            worker.stop()
