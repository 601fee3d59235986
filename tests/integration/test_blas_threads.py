"""A started server multiplies on one BLAS thread (media/blas.py; found by issue 13's profile).

numpy's OpenBLAS runs one thread per core by default and splits a large enough product across
them; the batched resampling products are that large from ~50 calls per phase group, and the
idle workers then spin (0.3 of a core beside a 100-call server, 14.9 against 9.2 ms of CPU per
call-second). ``scripts/test`` and the benchmarks set ``OPENBLAS_NUM_THREADS=1`` themselves, so
each case runs a real ``Server`` in a fresh interpreter with the environment a deployment has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sipbot.media.blas import OPERATOR_VARIABLES, limit_blas_threads

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio, json, sys
import numpy
from threadpoolctl import threadpool_limits
from sipbot.config import load_config
from sipbot.media.blas import blas_threads
from sipbot.server import Server

if sys.argv[2] == "raise":
    threadpool_limits(limits=2, user_api="blas")  # as OpenBLAS starts on a machine of 2+ cores

async def main():
    before = blas_threads()
    server = Server(load_config(sys.argv[1]))
    await server.start()
    try:
        print(json.dumps({"before": before, "after": blas_threads()}))
    finally:
        await server.stop()

asyncio.run(main())
"""


def run_server(tmp_path: Path, env_extra: dict[str, str], mode: str) -> dict[str, list[int]]:
    config = tmp_path / "blas.yaml"
    config.write_text(
        json.dumps(
            {
                "server": {
                    "sip": {"listen": ["udp:127.0.0.1:0"]},
                    "data_dir": str(tmp_path / "data"),
                    "http": {"listen": None},
                },
                "agents": {"echo": {"provider": "local", "local": {"mode": "echo"}}},
                "routes": [{"name": "default", "answer": "echo"}],
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in OPERATOR_VARIABLES}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, list[int]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_started_server_sets_blas_to_one_thread(tmp_path: Path) -> None:
    threads = run_server(tmp_path, {}, "raise")
    assert threads["before"], "numpy's BLAS library was not found loaded"
    assert max(threads["before"]) == 2  # what the server is handed
    assert threads["after"] == [1] * len(threads["before"])


def test_an_operator_setting_is_kept(tmp_path: Path) -> None:
    threads = run_server(tmp_path, {"OPENBLAS_NUM_THREADS": "2"}, "keep")
    assert threads["before"] == threads["after"] == [2]


def test_limit_blas_threads_rules() -> None:
    assert limit_blas_threads({"OMP_NUM_THREADS": "4"}) is False  # Rule 2
    assert limit_blas_threads({}) is True  # Rule 1
