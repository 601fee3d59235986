"""Start, watch and stop one external process (a SIP peer or a server under test).

Contract:
- stdout and stderr go to files ``<log_dir>/<name>.stdout.log`` / ``.stderr.log`` (never pipes:
  a chatty peer can never block on a full pipe, and the logs stay for the test report).
- The process runs in its own session (``start_new_session``) so a Ctrl-C aimed at pytest does not
  hit it first; it is stopped by its PID only: SIGTERM, a bounded wait, then SIGKILL; always reaped.
- Every wait is bounded; a timeout raises :class:`PeerError` naming the process and its log files.
- Every started process is remembered until it is reaped: :func:`live_processes` lets a test
  fixture stop whatever a failed test left behind, and an ``atexit`` hook stops the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

Stream = Literal["stdout", "stderr"]

POLL_INTERVAL_S = 0.02  # 20 ms: log polling granularity while waiting for a readiness line
DEFAULT_STOP_TIMEOUT_S = 5.0


class PeerError(RuntimeError):
    """A peer did not start, did not get ready in time, or failed; the message names its logs."""


class ManagedProcess:
    """One child process with its logs on disk.

    Use :meth:`start`; stop with :meth:`stop` or use it as a context manager.
    """

    def __init__(
        self, name: str, argv: Sequence[str], popen: subprocess.Popen[bytes], log_dir: Path
    ):
        self.name = name
        self.argv = list(argv)
        self.popen = popen
        self.log_dir = log_dir
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin_data: bytes | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` with its output in ``log_dir``.

        Args:
            name: Short unique name in ``log_dir`` (used for the log file names).
            argv: Program and arguments (no shell).
            log_dir: Existing directory for the log files.
            cwd: Working directory (default: inherit).
            env: Extra environment variables, added to ``os.environ``.
            stdin_data: If given, stdin is a pipe and these bytes are written (then kept open, so
                interactive peers such as linphonec do not see EOF); else stdin is /dev/null.

        Raises:
            PeerError: The program could not be executed.
        """
        log_dir.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env or {})
        out = (log_dir / f"{name}.stdout.log").open("wb")
        err = (log_dir / f"{name}.stderr.log").open("wb")
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=full_env,
                start_new_session=True,
            )
        except OSError as exc:
            raise PeerError(f"{name}: cannot run {argv[0]!r}: {exc}") from exc
        finally:
            out.close()
            err.close()
        (log_dir / f"{name}.cmdline").write_text(" ".join(argv) + "\n")
        proc = cls(name, argv, popen, log_dir)
        _live[popen.pid] = proc
        if stdin_data is not None:
            proc.write_stdin(stdin_data)
        return proc

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit code (negative: killed by that signal), or None while running."""
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def write_stdin(self, data: bytes) -> None:
        """Send bytes to the process's stdin (only if started with ``stdin_data``)."""
        if self.popen.stdin is None:
            raise PeerError(f"{self.name}: started without a stdin pipe")
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def read_log(self, stream: Stream = "stdout") -> str:
        """The whole log of ``stream`` so far (decoded leniently)."""
        path = self.stdout_path if stream == "stdout" else self.stderr_path
        return path.read_bytes().decode("utf-8", "replace")

    def logs(self) -> str:
        """stdout then stderr, for assertion messages."""
        return f"--- {self.stdout_path}\n{self.read_log('stdout')}\n--- {self.stderr_path}\n" + (
            self.read_log("stderr")
        )

    def wait_for_line(
        self, pattern: str, timeout: float, stream: Stream = "stdout"
    ) -> re.Match[str]:
        """Wait until a line of ``stream`` matches the regex ``pattern`` (``re.search``).

        Raises:
            PeerError: Timeout, or the process exited before printing such a line.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running()  # read the log *after* the exit check: no lost last lines
            match = regex.search(self.read_log(stream))
            if match:
                return match
            if exited:
                raise PeerError(
                    f"{self.name} exited with {self.returncode} before printing {pattern!r} "
                    f"on {stream}; logs: {self.stdout_path} {self.stderr_path}"
                )
            if time.monotonic() >= deadline:
                raise PeerError(
                    f"{self.name} did not print {pattern!r} on {stream} within {timeout:.1f} s; "
                    f"logs: {self.stdout_path} {self.stderr_path}"
                )
            time.sleep(POLL_INTERVAL_S)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; return its exit code.

        Raises:
            PeerError: Still running after ``timeout`` seconds (it is then killed and reaped).
        """
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(timeout=1.0)
            raise PeerError(
                f"{self.name} still running after {timeout:.1f} s (killed); "
                f"logs: {self.stdout_path} {self.stderr_path}"
            ) from None

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to this process's PID if it is still running."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S, signum: int = signal.SIGTERM) -> int:
        """SIGTERM (or ``signum``), wait up to ``timeout``, then SIGKILL; reap; return exit code."""
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(OSError):  # the child closed its end: nothing to flush
                self.popen.stdin.close()
        if self.popen.poll() is None:
            self.send_signal(signum)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
        return self.popen.wait(timeout=10.0)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_live: dict[int, ManagedProcess] = {}


def live_processes() -> list[ManagedProcess]:
    """Processes started here and not yet exited (forgets the ones that have)."""
    for pid, proc in list(_live.items()):
        if not proc.running():
            del _live[pid]
    return list(_live.values())


@atexit.register
def _stop_all() -> None:
    for proc in live_processes():
        proc.stop(timeout=1.0)


def run_to_completion(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    timeout: float,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """Run a process until it exits by itself (bounded by ``timeout``); return it, reaped.

    Raises:
        PeerError: It did not exit within ``timeout`` (then it is killed).
    """
    proc = ManagedProcess.start(name, argv, log_dir, cwd=cwd, env=env)
    proc.wait(timeout)
    return proc
