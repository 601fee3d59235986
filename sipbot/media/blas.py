"""One BLAS thread in a server process (``threadpoolctl``; the only module that imports it).

The media path multiplies with numpy (:mod:`sipbot.media.resample`: every call's 20 ms frames,
and a whole phase group's frames in one product, resample Rule 7). numpy's OpenBLAS starts one
worker thread per core and splits a product across them once it is large enough, which the
batched products are from ~50 calls per phase group; after each product those threads spin
waiting for the next one. Measured (``bench_calls.py``, 100 loopback calls, 2 cores): with
OpenBLAS's default the server used 14.9 ms of CPU per call-second, one OpenBLAS thread alone
0.3 of a core, against 9.2 ms with one thread, which is also faster per product: a 20 ms
frame's product is microseconds, far below what waking another thread costs.

Rules:

* Rule 1: :func:`limit_blas_threads` sets every loaded BLAS library to one thread, at server
  start (numpy is imported by then, so an environment variable set now would come too late;
  ``threadpoolctl`` changes the loaded library's setting, for ``sipbot.serve()`` inside an
  application that imported numpy first as well).
* Rule 2: an operator's own setting wins: with ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``,
  ``BLIS_NUM_THREADS`` or ``OMP_NUM_THREADS`` in the environment nothing is changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from threadpoolctl import threadpool_info, threadpool_limits

OPERATOR_VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "OMP_NUM_THREADS",
)


def limit_blas_threads(environ: Mapping[str, str] = os.environ) -> bool:
    """One thread for every loaded BLAS library (Rule 1); False if the operator set one (Rule 2)."""
    if any(name in environ for name in OPERATOR_VARIABLES):
        return False
    threadpool_limits(limits=1, user_api="blas")
    return True


def blas_threads() -> list[int]:
    """The thread count of every loaded BLAS library (for tests and diagnosis)."""
    return [int(info["num_threads"]) for info in threadpool_info() if info["user_api"] == "blas"]
