"""Integrator hooks, the sans-I/O part: the events a call emits, what a call-start hook may
decide, and the ``hooks:`` section of a config file (the asyncio dispatcher is
:mod:`sipbot.hooks`).

Rules:

* Rule 1: events are frozen dataclasses with a JSON form (:meth:`HookEvent.to_json`); what a
  Python hook gets is what a webhook gets as its body (``{"event": NAME, ...}``).
* Rule 2: a call-start decision is ``{"agent": NAME}`` (answer with that agent of the dialplan)
  or ``{"reject": STATUS, "reason": TEXT}`` (a final response 400-699); anything else — None,
  an empty mapping, an unknown agent, a bad status — is no decision: the dialplan's choice stands
  (:func:`parse_decision`).
* Rule 3: redaction fails closed: a transcript hook that raises, times out or returns something
  other than a string or None leaves :data:`REDACTION_FAILED` in place of the line, never the
  text it was given (:func:`redacted`).
* Rule 4: a bad ``hooks:`` entry is a load error naming file, line and field: an unknown event,
  a ``python:`` reference that does not import, neither or both of ``python:`` / ``webhook:``,
  a URL that is not http(s).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field

from sipbot.dialplan.schema import StrictModel
from sipbot.errors import ConfigError, ToolDefinitionError
from sipbot.secret import Secret, to_secret
from sipbot.tools.registry import import_reference
from sipbot.yamlsource import Document, Path

CALL_START = "call.start"
CALL_END = "call.end"
TRANSCRIPT = "transcript"
TOOL_CALL = "tool.call"
TOOL_RESULT = "tool.result"
SPEECH_START = "speech.start"
SPEECH_END = "speech.end"
BARGE_IN = "barge_in"
PROVIDER_SWITCH = "provider.switch"
EVENTS = (
    CALL_START,
    TRANSCRIPT,
    TOOL_CALL,
    TOOL_RESULT,
    SPEECH_START,
    SPEECH_END,
    BARGE_IN,
    PROVIDER_SWITCH,
    CALL_END,
)
CALL_START_TIMEOUT_MS = 1_000  # the caller waits for the answer meanwhile
TRANSCRIPT_TIMEOUT_MS = 1_000  # the line waits (off the media path) for its redaction
DEFAULT_TIMEOUT_MS = 2_000  # every other event
REDACTION_FAILED = "[redacted: transcript hook failed]"  # Rule 3

Side = Literal["caller", "agent"]


# --------------------------------------------------------------------------- events (Rule 1)


@dataclass(frozen=True, slots=True)
class HookEvent:
    """What every event carries: the call and when (wall clock, ``time.time()``)."""

    name: ClassVar[str] = ""
    call_id: str
    at: float

    def to_json(self) -> dict[str, Any]:
        """The event as a webhook's JSON body."""
        return {"event": self.name, **asdict(self)}

    @property
    def state(self) -> str:
        """The event's name (how the webhook sender's log names what it posts)."""
        return self.name


@dataclass(frozen=True, slots=True)
class CallStart(HookEvent):
    """An INVITE was routed; a hook may answer it with another agent or reject it (Rule 2).

    ``route`` and ``agent`` are the dialplan's choice (``agent`` empty when the route does not
    answer: it rejects or redirects)."""

    name: ClassVar[str] = CALL_START
    caller: str = ""
    did: str = ""
    display_name: str = ""
    source: str = ""
    trunk: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    route: str = ""
    agent: str = ""

    def to_json(self) -> dict[str, Any]:
        """The event as JSON (headers as a plain object)."""
        return {**HookEvent.to_json(self), "headers": dict(self.headers)}


@dataclass(frozen=True, slots=True)
class TranscriptLine(HookEvent):
    """A final line of what ``role`` said: a Python hook may return it redacted (Rule 3);
    webhooks get the redacted line."""

    name: ClassVar[str] = TRANSCRIPT
    role: Side = "caller"
    text: str = ""


@dataclass(frozen=True, slots=True)
class ToolCalled(HookEvent):
    """The model called a tool."""

    name: ClassVar[str] = TOOL_CALL
    id: str = ""
    tool: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as JSON (arguments as a plain object)."""
        return {**HookEvent.to_json(self), "arguments": dict(self.arguments)}


@dataclass(frozen=True, slots=True)
class ToolResult(HookEvent):
    """A tool call finished; ``output`` is its JSON text (cut as in the call record)."""

    name: ClassVar[str] = TOOL_RESULT
    id: str = ""
    tool: str = ""
    output: str = ""
    error: bool = False
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class SpeechStart(HookEvent):
    """``side`` began to speak (caller: the energy detector on its audio; agent: its first
    audio of a reply was queued for the caller)."""

    name: ClassVar[str] = SPEECH_START
    side: Side = "caller"


@dataclass(frozen=True, slots=True)
class SpeechEnd(HookEvent):
    """``side`` stopped speaking; ``cut``: the agent's reply was cut by a barge-in."""

    name: ClassVar[str] = SPEECH_END
    side: Side = "caller"
    cut: bool = False


@dataclass(frozen=True, slots=True)
class BargeIn(HookEvent):
    """The caller spoke over the agent: its audio was flushed; ``heard_ms`` of the cut reply
    had played."""

    name: ClassVar[str] = BARGE_IN
    heard_ms: int = 0


@dataclass(frozen=True, slots=True)
class ProviderSwitch(HookEvent):
    """The call moved to another provider session: a failover (``reason`` is why the old one
    was lost) or a handoff (``reason`` = ``handoff``, ``agent`` the new agent)."""

    name: ClassVar[str] = PROVIDER_SWITCH
    reason: str = ""
    from_provider: str = ""
    to_provider: str = ""
    agent: str = ""


@dataclass(frozen=True, slots=True)
class CallEnd(HookEvent):
    """The call is over; ``record`` is its call record as JSON (the CDR fields, the transcript
    as stored — redacted — and the tool calls)."""

    name: ClassVar[str] = CALL_END
    reason: str = ""
    record: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as JSON (the record as a plain object)."""
        return {**HookEvent.to_json(self), "record": dict(self.record)}


# --------------------------------------------------------------------------- decisions (Rule 2)


@dataclass(frozen=True, slots=True)
class Decision:
    """A call-start hook's answer: ``agent`` to answer with, or ``reject`` (status, reason)."""

    agent: str | None = None
    reject: int | None = None
    reason: str = ""


def parse_decision(value: object, agents: Iterable[str]) -> Decision | None:
    """What a call-start hook returned (or a webhook answered) as a :class:`Decision`; None is
    no decision (Rule 2).

    Args:
        value: a :class:`Decision`, a mapping ``{"agent": ...}`` / ``{"reject": ..., "reason":
            ...}``, or anything else (no decision).
        agents: the dialplan's agent names.
    """
    if isinstance(value, Decision):
        value = {"agent": value.agent, "reject": value.reject, "reason": value.reason}
    if not isinstance(value, Mapping):
        return None
    status = value.get("reject")
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 699:
        reason = value.get("reason")
        return Decision(reject=status, reason=reason if isinstance(reason, str) else "")
    agent = value.get("agent")
    if isinstance(agent, str) and agent in set(agents):
        return Decision(agent=agent)
    return None


def redacted(result: object, *, failed: bool) -> str | None:
    """The line a transcript hook leaves (Rule 3): its string, None (unchanged) when it returned
    None, :data:`REDACTION_FAILED` when it ``failed`` (raised, timed out) or returned anything
    else."""
    if failed:
        return REDACTION_FAILED
    if result is None or isinstance(result, str):
        return result
    return REDACTION_FAILED


# --------------------------------------------------------------------------- config (Rule 4)


class WebhookModel(StrictModel):
    """``hooks[].webhook``: where events are POSTed."""

    url: str
    token: Any = None  # an EnvString or a string: ``Authorization: Bearer TOKEN``
    secret: Any = None  # signs each body: ``X-Sipbot-Signature: sha256=HMAC``


class HookModel(StrictModel):
    """One entry of the top-level ``hooks:`` list."""

    python: str | None = None
    webhook: WebhookModel | None = None
    events: list[str] = Field(default_factory=lambda: list(EVENTS))
    timeout_ms: int | None = Field(default=None, ge=1, le=60_000)


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A webhook's URL and credentials (the secrets mask themselves)."""

    url: str
    token: Secret | None = None
    secret: Secret | None = None


@dataclass(frozen=True, slots=True)
class Hook:
    """A loaded hook: a Python callable (async or not) or a webhook, and its events.

    ``timeout_ms`` None: the event's default (CALL_START_TIMEOUT_MS, TRANSCRIPT_TIMEOUT_MS or
    DEFAULT_TIMEOUT_MS)."""

    events: frozenset[str]
    function: Callable[[HookEvent], Any] | None = None
    webhook: WebhookTarget | None = None
    timeout_ms: int | None = None
    label: str = ""

    @property
    def is_async(self) -> bool:
        """The function is a coroutine function (runs on the loop; else in a thread)."""
        return self.function is not None and inspect.iscoroutinefunction(self.function)

    def timeout_s(self, event: str) -> float:
        """This hook's bound for ``event``, in seconds."""
        if self.timeout_ms is not None:
            return self.timeout_ms / 1000
        if event == CALL_START:
            return CALL_START_TIMEOUT_MS / 1000
        if event == TRANSCRIPT:
            return TRANSCRIPT_TIMEOUT_MS / 1000
        return DEFAULT_TIMEOUT_MS / 1000


def python_hook(
    function: Callable[[HookEvent], Any],
    events: Iterable[str] = EVENTS,
    *,
    timeout_ms: int | None = None,
) -> Hook:
    """A Python hook built in code (``sipbot.serve(..., hooks=[...])``).

    Raises:
        ConfigError: an unknown event.
    """
    return Hook(_events(events), function, None, timeout_ms, f"python {function.__qualname__}")


def webhook_hook(
    url: str,
    events: Iterable[str] = EVENTS,
    *,
    token: str | Secret | None = None,
    secret: str | Secret | None = None,
    timeout_ms: int | None = None,
) -> Hook:
    """A webhook built in code (``sipbot.serve(..., hooks=[...])``).

    Raises:
        ConfigError: an unknown event, or a URL that is not http(s).
    """
    if not re.match(r"https?://[^/\s]+", url):
        raise ConfigError(f"bad URL {url!r}: expected http:// or https://", field="url")
    target = WebhookTarget(url, _secret(token), _secret(secret))
    return Hook(_events(events), None, target, timeout_ms, f"webhook {url}")


def _events(events: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(events)
    unknown = sorted(chosen - set(EVENTS))
    if unknown:
        raise ConfigError(f"unknown event {unknown[0]!r} ({', '.join(EVENTS)})", field="events")
    return chosen


def build_hooks(
    models: Iterable[HookModel], doc: Document, search_paths: Iterable[str] = ()
) -> tuple[Hook, ...]:
    """The ``hooks:`` entries, loaded and checked (Rule 4).

    Raises:
        ConfigError: ``FILE:LINE: hooks[N].FIELD: message`` for the first bad entry.
    """
    paths = list(search_paths)
    return tuple(_hook(doc, index, model, paths) for index, model in enumerate(models))


def _hook(doc: Document, index: int, model: HookModel, search_paths: list[str]) -> Hook:
    where: Path = ("hooks", index)
    for position, event in enumerate(model.events):
        if event not in EVENTS:
            known = ", ".join(EVENTS)
            raise doc.error((*where, "events", position), f"unknown event {event!r} ({known})")
    events = frozenset(model.events)
    if (model.python is None) == (model.webhook is None):
        raise doc.error(where, "a hook needs exactly one of python: or webhook:")
    if model.python is not None:
        try:
            function = load_function(model.python, search_paths)
        except ToolDefinitionError as exc:
            raise doc.error((*where, "python"), str(exc)) from None
        return Hook(events, function, None, model.timeout_ms, f"python {model.python}")
    webhook = model.webhook
    assert webhook is not None
    if not re.match(r"https?://[^/\s]+", webhook.url):
        message = f"bad URL {webhook.url!r}: expected http:// or https://"
        raise doc.error((*where, "webhook", "url"), message)
    target = WebhookTarget(webhook.url, _secret(webhook.token), _secret(webhook.secret))
    return Hook(events, None, target, model.timeout_ms, f"webhook {webhook.url}")


def load_function(reference: str, search_paths: Iterable[str] = ()) -> Callable[..., Any]:
    """Import ``package.module:function`` (as a tool's, :func:`import_reference`).

    Raises:
        ToolDefinitionError: a malformed reference, an import error, or not callable.
    """
    target = import_reference(reference, search_paths)
    if not callable(target):
        raise ToolDefinitionError(f"{reference} is not a function")
    return target  # type: ignore[no-any-return]


def _secret(value: object) -> Secret | None:
    if value is None:
        return None
    return to_secret(value if isinstance(value, Secret | str) else str(value))
