"""Keeping a conversation alive across provider connections (sans-I/O, shared by the adapters).

A cloud session ends for reasons that are not the caller's business: Gemini announces the end of
a connection with ``goAway``, OpenAI ends a session after an hour, sockets drop. The adapters
reconnect; this module holds what they need to do it well:

* :class:`ReconnectBudget` decides how long to wait before the next attempt and when to give up.
* :class:`TranscriptLog` keeps the final transcript of the call, to seed a new session with the
  conversation so far when the provider cannot resume the old one.
* :func:`greeting_prompt` turns a configured greeting into the text turn that makes the model
  speak first.

Rule 1: ``ReconnectBudget`` counts consecutive failures; a connection that stayed up for
``healthy_s`` resets the count, so a long call may reconnect any number of times while a
connection that keeps failing gives up after ``max_attempts``.
"""

from __future__ import annotations

from collections import deque

from sipbot.domain import Transcript

MAX_ATTEMPTS = 5
BASE_DELAY_S = 0.25  # second attempt waits this long; each further attempt doubles it
MAX_DELAY_S = 2.0  # a caller on hold for longer than a few seconds hangs up anyway
HEALTHY_S = 10.0  # a connection that lasted this long was not part of a failure streak
HISTORY_MAX_CHARS = 20_000  # transcript kept for seeding (a long call keeps its recent part)


class ReconnectBudget:
    """How long to wait before reconnecting, and when to stop trying (see Rule 1).

    Args:
        max_attempts: consecutive failed connections tolerated before giving up.
        base_delay_s: delay before the second attempt (the first is immediate).
        max_delay_s: cap of the exponential backoff.
        healthy_s: a connection up at least this long resets the failure count.
    """

    def __init__(
        self,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        base_delay_s: float = BASE_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        healthy_s: float = HEALTHY_S,
    ) -> None:
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.healthy_s = healthy_s
        self.attempts = 0
        self._connected_at: float | None = None

    def connected(self, now: float) -> None:
        """A connection is up and configured."""
        self._connected_at = now

    def lost(self, now: float) -> float | None:
        """The connection ended; returns the delay before the next attempt, or None to give up."""
        if self._connected_at is not None and now - self._connected_at >= self.healthy_s:
            self.attempts = 0
        self._connected_at = None
        return self._next_delay()

    def failed(self) -> float | None:
        """A connection attempt failed; returns the delay before the next one, or None."""
        return self._next_delay()

    def _next_delay(self) -> float | None:
        self.attempts += 1
        if self.attempts > self.max_attempts:
            return None
        if self.attempts == 1:
            return 0.0
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** (self.attempts - 2)))


class TranscriptLog:
    """The final transcript of a call, oldest first, bounded to its most recent part.

    Args:
        history: the transcript the session was opened with (``SessionConfig.history``).
        max_chars: total text kept; the oldest entries go first.
    """

    def __init__(
        self, history: tuple[Transcript, ...] = (), *, max_chars: int = HISTORY_MAX_CHARS
    ) -> None:
        self._entries: deque[Transcript] = deque()
        self._chars = 0
        self._max_chars = max_chars
        for entry in history:
            self.add(entry)

    def add(self, transcript: Transcript) -> None:
        """Record ``transcript`` if it is final and not blank; partial text is ignored."""
        if not transcript.final or not transcript.text.strip():
            return
        self._entries.append(transcript)
        self._chars += len(transcript.text)
        while self._chars > self._max_chars and len(self._entries) > 1:
            self._chars -= len(self._entries.popleft().text)

    def history(self) -> tuple[Transcript, ...]:
        """The transcript so far, oldest first."""
        return tuple(self._entries)


def greeting_prompt(greeting: str) -> str:
    """The caller-side text turn that makes the model open the call with ``greeting``."""
    return f'The phone call has just been answered. Greet the caller by saying: "{greeting}"'
