"""Keeping a conversation alive across provider connections (sans-I/O, shared by the adapters).

A cloud session ends for reasons that are not the caller's business: Gemini announces the end of
a connection with ``goAway``, OpenAI ends a session after an hour, sockets drop. The adapters
reconnect; this module holds what they need to do it well:

* :class:`ReconnectBudget` decides how long to wait before the next attempt and when to give up.
* :class:`TranscriptLog` keeps the final transcript of the call, to seed a new session with the
  conversation so far when the provider cannot resume the old one.
* :func:`greeting_prompt` turns a configured greeting into the text turn that makes the model
  speak first.
* :class:`StallWatch` tells when a connection that should be producing has stopped (a stall).
* :class:`HeardText` maps agent transcript pieces onto the audio they came with, to say which
  words of a reply the caller heard before a barge-in.

Rule 1: ``ReconnectBudget`` counts consecutive failures; a connection that stayed up for
``healthy_s`` resets the count, so a long call may reconnect any number of times while a
connection that keeps failing gives up after ``max_attempts``.

Rule 2: output is *due* from the moment the model owes an answer (the caller's turn ended, a
text or tool result was sent, a greeting asked for) and while a reply is arriving; it stops being
due when the turn completes, the caller interrupts, or the model calls a tool (then it waits for
us). ``StallWatch`` reports a stall when nothing arrived for ``timeout_s`` while output was due;
each arrival pushes the deadline. A completed reply with audio resets ``in_a_row``.

Rule 3: ``HeardText`` places each agent transcript piece over the audio received for its item
between the previous piece and this one, words spread evenly; the caller heard the words that
start before the played ms.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from sipbot.domain import (
    AudioOut,
    Interrupted,
    ProviderEvent,
    ToolCall,
    Transcript,
    TurnComplete,
)

MAX_ATTEMPTS = 5
BASE_DELAY_S = 0.25  # second attempt waits this long; each further attempt doubles it
MAX_DELAY_S = 2.0  # a caller on hold for longer than a few seconds hangs up anyway
HEALTHY_S = 10.0  # a connection that lasted this long was not part of a failure streak
HISTORY_MAX_CHARS = 20_000  # transcript kept for seeding (a long call keeps its recent part)
STALL_TIMEOUT_S = 4.0  # nothing for this long while output is due: the session stalled
HEARD_ITEMS = 4  # replies whose transcript timing is kept (a barge-in cuts a recent one)


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

    def cut_last_agent(self, text: str) -> None:
        """Replace the latest agent entry by ``text`` (what the caller heard of it)."""
        for index in range(len(self._entries) - 1, -1, -1):
            entry = self._entries[index]
            if entry.role == "agent":
                self._chars += len(text) - len(entry.text)
                self._entries[index] = Transcript("agent", text)
                return


class StallWatch:
    """Whether a session that owes output has stopped producing (see Rule 2).

    Args:
        timeout_s: how long nothing may arrive while output is due.
        caller_text_due: a caller transcript makes output due (Gemini: it marks the caller's
            turn; OpenAI transcribes asynchronously, sometimes after the reply, so no).

    Attributes:
        in_a_row: stalls since the last completed reply with audio.
    """

    def __init__(self, timeout_s: float = STALL_TIMEOUT_S, *, caller_text_due: bool) -> None:
        self.timeout_s = timeout_s
        self.caller_text_due = caller_text_due
        self.in_a_row = 0
        self._deadline: float | None = None

    @property
    def due(self) -> bool:
        """Whether output is due now."""
        return self._deadline is not None

    def deadline(self) -> float | None:
        """When to look again (None: nothing is due)."""
        return self._deadline

    def expect(self, now: float) -> None:
        """Output is due from ``now`` (or arrived and more is coming): push the deadline."""
        self._deadline = now + self.timeout_s

    def settle(self) -> None:
        """Nothing is due any more."""
        self._deadline = None

    def event(self, event: ProviderEvent, now: float) -> None:
        """Account for an event the session emits."""
        if isinstance(event, AudioOut):
            self.expect(now)
        elif isinstance(event, Transcript):
            # an agent's final text closes its turn (or follows an interruption): not progress
            agent_piece = event.role == "agent" and not event.final
            caller = event.role == "caller" and (self.caller_text_due or self.due)
            if agent_piece or caller:
                self.expect(now)
        elif isinstance(event, TurnComplete):
            if event.item_id is not None:
                self.in_a_row = 0
            self.settle()
        elif isinstance(event, Interrupted | ToolCall):
            self.settle()

    def stalled(self, now: float) -> bool:
        """Whether output was due and nothing came by ``now``; counts the stall once."""
        if self._deadline is None or now < self._deadline:
            return False
        self.in_a_row += 1
        self._deadline = None
        return True


class HeardText:
    """Which words of a reply the caller heard (see Rule 3).

    Feed it every :class:`AudioOut` (:meth:`audio`) and agent transcript piece
    (:meth:`piece`) in arrival order; ask :meth:`heard` after a barge-in.

    Args:
        bytes_per_ms: of the agent audio format.
    """

    def __init__(self, bytes_per_ms: int) -> None:
        self._bytes_per_ms = bytes_per_ms
        # item id -> (audio bytes so far, bytes where the next piece starts, [(start ms, word)])
        self._items: OrderedDict[str, tuple[int, int, list[tuple[float, str]]]] = OrderedDict()
        self._current: str | None = None

    def audio(self, item_id: str, size: int) -> None:
        """``size`` bytes of agent audio of ``item_id`` arrived."""
        received, start, words = self._items.pop(item_id, (0, 0, []))
        self._items[item_id] = (received + size, start, words)
        self._current = item_id
        while len(self._items) > HEARD_ITEMS:
            self._items.popitem(last=False)

    def piece(self, text: str) -> None:
        """An agent transcript piece of the reply now arriving."""
        item = self._current
        if item is None or item not in self._items:
            return
        received, start, words = self._items[item]
        pieces = text.split()
        span = received - start
        for index, word in enumerate(pieces):
            offset = start + span * index / len(pieces)
            words.append((offset / self._bytes_per_ms, word))
        self._items[item] = (received, received, words)

    def word_count(self, item_id: str) -> int:
        """How many words of ``item_id`` arrived (0 for an unknown item)."""
        entry = self._items.get(item_id)
        return 0 if entry is None else len(entry[2])

    def heard(self, item_id: str, played_ms: int) -> str | None:
        """The words of ``item_id`` that started within ``played_ms``; None: unknown item."""
        entry = self._items.get(item_id)
        if entry is None:
            return None
        return " ".join(word for start_ms, word in entry[2] if start_ms < played_ms)


SYSTEM_NOTE = "[system note]"
RESUME_NOTE = (
    f"{SYSTEM_NOTE} This call has just been moved to you from another assistant after a "
    "technical problem; the conversation so far is above. If the caller's last request is "
    "unanswered, answer it now; otherwise say briefly that you are back, then listen."
)


def handoff_note(reason: str) -> str:
    """What the agent taking over a call is told after the conversation so far."""
    return (
        f"{SYSTEM_NOTE} The call has just been handed over to you by another agent (reason: "
        f"{reason}); the conversation so far is above. Greet the caller briefly and carry on."
    )


def tool_note(name: str, arguments: str, output: str) -> str:
    """A tool call and its result, as a system note for seeding another model."""
    return f"{SYSTEM_NOTE} You called the tool {name} with {arguments}; it returned: {output}"


def failover_seed(
    lines: list[tuple[float, Transcript]], tools: list[tuple[float, str, str, str]]
) -> tuple[Transcript, ...]:
    """The history a fallback session starts with: transcript lines and tool calls in time order.

    Args:
        lines: ``(when, transcript)``, the agent's cut replies already as heard.
        tools: ``(when it ended, name, arguments as JSON, output)``.
    """
    entries = list(lines)
    entries += [(at, Transcript("caller", tool_note(*rest))) for at, *rest in tools]
    entries.sort(key=lambda entry: entry[0])
    return tuple(transcript for _, transcript in entries)


def greeting_prompt(greeting: str) -> str:
    """The caller-side text turn that makes the model open the call with ``greeting``."""
    return f'The phone call has just been answered. Greet the caller by saying: "{greeting}"'
