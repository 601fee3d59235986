"""A throwaway PostgreSQL 15 cluster: a temp dir, a free port, stopped and removed after the test.

The packaged cluster is never touched. ``initdb -A trust --no-sync`` and ``fsync=off`` make it
start in about half a second. PostgreSQL refuses to run as root: when the tests run as root the
cluster runs as the ``postgres`` user, in a directory under /tmp that user may enter.

:func:`postgres_unavailable` says why a cluster cannot be made here (None when it can); tests
skip on it locally and fail under ``CI=true`` (:func:`require_postgres`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.peers.ports import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05


def postgres_unavailable() -> str | None:
    """Why no throwaway cluster can run here, or None."""
    if not (BIN / "postgres").exists():
        return "PostgreSQL 15 is not installed (postgresql-15; scripts/install-system-deps)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user"
    return None


def require_postgres() -> None:
    """Skip (locally) or fail (``CI=true``) when PostgreSQL is missing."""
    reason = postgres_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI lacks what this test needs: {reason}")
    pytest.skip(reason)


class PostgresCluster:
    """One cluster; :meth:`start` it, :meth:`stop`/:meth:`start` it again, :meth:`destroy` it.

    Attributes:
        port: its TCP port on 127.0.0.1 (kept across restarts).
        root: its directory (data in ``root/data``, log in ``root/postgres.log``).
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sipbot-pg."))
        self.port = free_port("tcp")
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}
        initdb = [str(BIN / "initdb"), "-D", str(self.root / "data"), "-U", "postgres"]
        initdb += ["-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"]
        subprocess.run(initdb, check=True, capture_output=True, timeout=60, **self._as)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait (bounded) until it accepts connections."""
        argv = [str(BIN / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port)]
        argv += ["-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        argv += ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._as
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._accepts():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {self.log_path}")
            time.sleep(POLL_S)

    def _accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url(), connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open connections are cut), bounded; SIGKILL after that."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def destroy(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
