"""Admission control and the drain state, sans-I/O: the server asks, this answers.

Rules:

* Rule 1: a new INVITE is refused (503 + Retry-After) while draining, at ``max_calls`` calls,
  or while the event loop lags more than ``max_loop_lag_ms``; the reason is one of
  :data:`REFUSAL_REASONS` (a bounded metric label).
* Rule 2: the count is the server's reservation count, taken synchronously when the INVITE
  arrives, before any await: a burst of INVITEs in one loop turn cannot overshoot.
* Rule 3: draining is one-way; it is also a reason to answer OPTIONS with 503 (a dispatcher in
  front then moves new traffic to other workers).
"""

from __future__ import annotations

from dataclasses import dataclass

REFUSAL_REASONS = ("draining", "capacity", "loop-lag")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused, and what to answer."""

    reason: str  # one of REFUSAL_REASONS
    retry_after_s: int
    status: int = 503


@dataclass(slots=True)
class Admission:
    """The admission decision and the drain flag.

    Args:
        max_calls: calls allowed at once.
        max_loop_lag_ms: loop lag above which new calls are refused.
        retry_after_s: the Retry-After for capacity and lag refusals.
        drain_retry_after_s: the Retry-After while draining (another worker should take it).
    """

    max_calls: int
    max_loop_lag_ms: float
    retry_after_s: int = 5
    drain_retry_after_s: int = 30
    draining: bool = False
    drain_started: float | None = None

    def decide(self, active: int, loop_lag_ms: float) -> Refusal | None:
        """None to admit a new call, else the :class:`Refusal` (Rule 1)."""
        if self.draining:
            return Refusal("draining", self.drain_retry_after_s)
        if active >= self.max_calls:
            return Refusal("capacity", self.retry_after_s)
        if loop_lag_ms > self.max_loop_lag_ms:
            return Refusal("loop-lag", self.retry_after_s)
        return None

    def ready(self, active: int, loop_lag_ms: float) -> tuple[bool, str]:
        """Whether a new call would be admitted now, and why not (``/readyz``)."""
        refusal = self.decide(active, loop_lag_ms)
        return (True, "ready") if refusal is None else (False, refusal.reason)

    def start_drain(self, now: float) -> bool:
        """Stop admitting (Rule 3); False when already draining."""
        if self.draining:
            return False
        self.draining = True
        self.drain_started = now
        return True
