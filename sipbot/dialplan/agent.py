"""An agent: a named profile of provider, model, voice, prompt, tools and call settings.

Agents are frozen and check themselves when made, so an agent built in Python code fails as
early and as clearly as one loaded from YAML (the loader adds file and line to the error).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sipbot.dialplan.amd import AmdSettings
from sipbot.dialplan.fields import did_you_mean, fail, parse_srtp, with_field
from sipbot.dialplan.match import zone
from sipbot.dialplan.options import ProviderOptions, check_language, with_free_options
from sipbot.dialplan.template import CALL_DATA_NOTE, Template
from sipbot.domain import CallInfo, SessionConfig, SrtpMode, ToolSpec, TurnDetection
from sipbot.errors import ConfigError, ToolDefinitionError
from sipbot.secret import Secret, to_secret
from sipbot.tools.builtin import BUILTIN_NAMES, MAX_TRANSFER_TIMEOUT_S, builtin_tool
from sipbot.tools.registry import Tool

ProviderName = Literal["local", "gemini", "openai"]
LocalMode = Literal["echo", "loopback"]
PROVIDERS: tuple[ProviderName, ...] = ("local", "gemini", "openai")
CODECS = ("G722", "PCMU", "PCMA")
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
DEFAULT_MAX_DURATION_S = 3600.0
BargeInMode = Literal["guard", "provider", "off"]
BARGE_IN_MODES: tuple[BargeInMode, ...] = ("guard", "provider", "off")
MIN_SPEECH_MS_RANGE = (100, 5000)


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Who decides that the caller interrupts the agent (docs/CONFIG.md, ``barge_in``).

    Attributes:
        mode: ``guard`` (sipbot's guard: Silero VAD + ``min_speech_ms``, the provider's own
            interruption off), ``provider`` (the provider's VAD, as ``turn.barge_in`` says) or
            ``off`` (the caller never interrupts).
        min_speech_ms: speech the guard needs before it cuts the agent.
    """

    mode: BargeInMode = "provider"
    min_speech_ms: int = 800


MemoryScope = Literal["agent", "all"]
MEMORY_SCOPES: tuple[MemoryScope, ...] = ("agent", "all")
MEMORY_DAYS_RANGE = (1, 3650)
MEMORY_MAX_CALLS_RANGE = (1, 20)
MEMORY_MAX_CHARS_RANGE = (100, 4000)


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """Returning callers (docs/CONFIG.md, ``memory``; :mod:`sipbot.memory`).

    Attributes:
        enabled: give a caller who called before a summary of the earlier calls in the prompt.
        days: only calls that started in the last ``days`` days count.
        max_calls: at most this many earlier calls, newest first.
        max_chars: the summary of the earlier calls is cut to this many characters.
        scope: ``agent`` (only this agent's calls) or ``all`` (calls to any agent).
    """

    enabled: bool = False
    days: int = 30
    max_calls: int = 3
    max_chars: int = 600
    scope: MemoryScope = "agent"


# put before the prompt of a call sipbot placed: the model must not greet as if called
OUTBOUND_NOTE = (
    "You placed this phone call to {to}; the person who answers did not call you. "
    "Introduce yourself and say why you are calling.\n\n"
)


def check_codecs(codecs: Sequence[str]) -> tuple[str, ...]:
    """Upper-case codec names in order; unknown or repeated names are errors.

    Raises:
        ConfigError: an unknown or repeated codec.
    """
    out: list[str] = []
    for name in codecs:
        upper = name.upper()
        if upper not in CODECS:
            hint = did_you_mean(upper, CODECS)
            known = ", ".join(CODECS)
            raise ConfigError(f"unknown codec {name!r}{hint} (supported: {known})")
        if upper in out:
            raise ConfigError(f"codec {upper} is listed twice")
        out.append(upper)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Agent:
    """A named agent profile.

    Args:
        name: the agent's name (routes refer to it).
        provider: ``local`` (offline echo/loopback), ``gemini`` or ``openai``.
        model, voice, language, temperature: passed to the provider (None → its default).
        prompt: the system prompt, a template (see :mod:`sipbot.dialplan.template`).
        greeting: what the agent says first, a template; None → it waits for the caller.
        tools: :class:`~sipbot.tools.registry.Tool` objects, or built-in tool names
            (``hang_up``, ``transfer_call``, ``send_dtmf``, ``get_caller_info``).
        transfer_allow: URI patterns ``transfer_call`` may transfer to (required with it).
        turn: voice activity / barge-in settings.
        max_duration_s: the call is ended after this long.
        recording: record the call to the server's ``recordings_dir``.
        codecs: codec preference for this agent's calls; () → the server's list.
        timezone: IANA timezone of ``{date}``, ``{time}``, ``{weekday}`` in templates.
        api_key: the provider key (from the environment); None → the provider's own default.
        base_url, ca_file: point the provider at another endpoint (an emulator).
        local_mode: ``echo`` or ``loopback`` (local provider only).
        options: provider-specific extras, passed on in ``SessionConfig.options``.
        tool_timeout_s: default timeout of this agent's tools.
        filler_after_ms: a tool running longer than this triggers the call's filler ("one
            moment"); None → no filler.
        transfer_timeout_s: longest wait for an accepted REFER's final NOTIFY; without one the
            caller stays with the agent (Conversation Rule 7). At most
            MAX_TRANSFER_TIMEOUT_S.
        transfer_briefing: a WAV file the target hears in a warm transfer before the caller is
            joined (Conversation Rule 9); None → none.
        transfer_hold: a WAV file the caller hears while a warm transfer calls the target;
            None → the built-in chime.
        srtp: ``off``, ``optional`` or ``required`` (SDES SRTP, docs/CONFIG.md); None → not
            set (off, unless the call's trunk sets it: the trunk's setting wins).
        barge_in: who decides that the caller interrupts (:class:`BargeIn`).
        amd: answering-machine detection on the agent's outbound calls.
        stall_timeout_ms: no model output this long while it is due is a stall, resumed in
            place; None → the provider layer's default (``continuity.STALL_TIMEOUT_S``).
        fallback: the same agent on another provider (model, voice, endpoint), which a call
            switches to when this agent's provider is lost (:meth:`with_fallback`); None → none.
        handoff_allow: names of the agents the ``handoff`` tool may hand the call to (required
            with it; the dialplan checks that they exist).
        provider_options: the typed ``gemini:`` or ``openai:`` block
            (:mod:`sipbot.dialplan.options`); it must be for this agent's provider.
        memory: returning callers: a summary of the caller's earlier calls in the prompt.

    Raises:
        ConfigError: an invalid value (``field`` names it, relative to the agent).
    """

    name: str
    provider: ProviderName = "local"
    model: str | None = None
    voice: str | None = None
    language: str | None = None
    prompt: str = ""
    greeting: str | None = None
    tools: Sequence[Tool | str] = ()
    transfer_allow: Sequence[str] = ()
    turn: TurnDetection = field(default_factory=TurnDetection)
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    recording: bool = False
    codecs: Sequence[str] = ()
    temperature: float | None = None
    timezone: str = "UTC"
    api_key: Secret | str | None = None
    base_url: str | None = None
    ca_file: str | None = None
    local_mode: LocalMode = "echo"
    options: Mapping[str, Any] = field(default_factory=dict)
    tool_timeout_s: float = 10.0
    filler_after_ms: int | None = None
    srtp: SrtpMode | None = None
    barge_in: BargeIn = field(default_factory=BargeIn, repr=False)
    transfer_timeout_s: float = 10.0
    transfer_briefing: str | None = None
    transfer_hold: str | None = None
    amd: AmdSettings = field(default_factory=AmdSettings)
    stall_timeout_ms: int | None = None
    fallback: Agent | None = None
    handoff_allow: Sequence[str] = ()
    provider_options: ProviderOptions | None = None
    memory: MemorySettings = field(default_factory=MemorySettings, repr=False)
    resolved_tools: tuple[Tool, ...] = field(init=False, repr=False, compare=False)
    _prompt: Template = field(init=False, repr=False, compare=False)
    _greeting: Template | None = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            fail("name", f"invalid agent name {self.name!r}: use letters, digits, _ and -")
        if self.provider not in PROVIDERS:
            hint = did_you_mean(self.provider, PROVIDERS)
            fail("provider", f"unknown provider {self.provider!r}{hint} (local, gemini, openai)")
        if self.local_mode not in ("echo", "loopback"):
            fail("local.mode", f"unknown local mode {self.local_mode!r} (echo, loopback)")
        _set(self, "transfer_allow", tuple(self.transfer_allow))
        _set(self, "handoff_allow", tuple(self.handoff_allow))
        _set(self, "codecs", with_field("codecs", check_codecs, self.codecs))
        _set(self, "resolved_tools", self._resolve_tools())
        _set(self, "tools", tuple(self.tools))
        _set(self, "_prompt", with_field("prompt", Template.parse, self.prompt))
        greeting = (
            None if self.greeting is None else with_field("greeting", Template.parse, self.greeting)
        )
        _set(self, "_greeting", greeting)
        _set(self, "_zone", with_field("timezone", zone, self.timezone))
        _set(self, "srtp", with_field("srtp", parse_srtp, self.srtp))
        if self.api_key is not None:
            _set(self, "api_key", to_secret(self.api_key))
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            fail("ca_file", f"no such file {self.ca_file!r}")
        for key in ("transfer_briefing", "transfer_hold"):
            path = getattr(self, key)
            if path is not None and not os.path.isfile(path):
                fail(key, f"no such file {path!r}")
        self._check_numbers()
        self._check_provider_options()

    def _resolve_tools(self) -> tuple[Tool, ...]:
        resolved: list[Tool] = []
        for index, item in enumerate(self.tools):
            if isinstance(item, str):
                if item not in BUILTIN_NAMES:
                    hint = did_you_mean(item, BUILTIN_NAMES)
                    fail(f"tools[{index}]", f"unknown tool {item!r}{hint}")
                if item == "transfer_call" and not self.transfer_allow:
                    fail(
                        f"tools[{index}]", "transfer_call needs transfer_allow: the URIs it may use"
                    )
                if item == "handoff" and not self.handoff_allow:
                    fail(f"tools[{index}]", "handoff needs handoff_allow: the agents it may use")
                try:
                    resolved.append(builtin_tool(item, self.transfer_allow, self.handoff_allow))
                except ToolDefinitionError as exc:
                    fail("transfer_allow", str(exc))
            else:
                resolved.append(item)
        names = [t.spec.name for t in resolved]
        for index, name in enumerate(names):
            if name in names[:index]:
                fail(f"tools[{index}]", f"tool {name!r} is listed twice")
        return tuple(resolved)

    def _check_numbers(self) -> None:
        turn = self.turn
        if not 0.0 <= turn.threshold <= 1.0:
            fail("turn.threshold", f"must be between 0 and 1, not {turn.threshold}")
        if turn.silence_ms <= 0 or turn.prefix_ms < 0:
            fail("turn", "silence_ms must be > 0 and prefix_ms >= 0")
        if self.max_duration_s <= 0:
            fail("max_duration_s", "must be > 0")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            fail("temperature", f"must be between 0 and 2, not {self.temperature}")
        if self.tool_timeout_s <= 0:
            fail("tool_timeout_s", "must be > 0")
        if not 0 < self.transfer_timeout_s <= MAX_TRANSFER_TIMEOUT_S:
            fail("transfer_timeout_s", f"must be > 0 and at most {MAX_TRANSFER_TIMEOUT_S:g}")
        if self.stall_timeout_ms is not None and self.stall_timeout_ms <= 0:
            fail("stall_timeout_ms", "must be > 0")
        fallback = self.fallback
        if fallback is not None:
            if fallback.fallback is not None:
                fail("fallback", "a fallback cannot have a fallback of its own")
            same = (fallback.provider, fallback.model, fallback.base_url)
            if same == (self.provider, self.model, self.base_url):
                fail("fallback", "the fallback is the agent's own provider, model and endpoint")
        self._check_barge_in()
        self._check_memory()

    def _check_barge_in(self) -> None:
        barge_in = self.barge_in
        if barge_in.mode not in BARGE_IN_MODES:
            hint = did_you_mean(barge_in.mode, BARGE_IN_MODES)
            fail("barge_in.mode", f"unknown mode {barge_in.mode!r}{hint} (guard, provider, off)")
        low, high = MIN_SPEECH_MS_RANGE
        if not low <= barge_in.min_speech_ms <= high:
            fail(
                "barge_in.min_speech_ms",
                f"must be between {low} and {high}, not {barge_in.min_speech_ms}",
            )

    def _check_provider_options(self) -> None:
        """Options Rules 1-3 (:mod:`sipbot.dialplan.options`), and the ``language`` tag."""
        check_language(self.provider, self.language)
        block = self.provider_options
        if block is not None and block.provider != self.provider:
            fail(
                block.provider,
                f"options for provider {block.provider}, but this agent's provider is "
                f"{self.provider}",
            )
        block = with_free_options(self.provider, block, self.options)
        _set(self, "provider_options", block)
        if block is None or not block.interrupts:
            return
        key = f"{block.provider}.{block.interruption_key}"
        if self.barge_in.mode != "provider":
            fail(
                key,
                f"turns the provider's interruption on, but barge_in.mode is "
                f"{self.barge_in.mode}: the provider's interruption is off there",
            )
        if not self.turn.barge_in:
            fail(key, "turns the provider's interruption on, but turn.barge_in is false")

    @property
    def provider_interrupts(self) -> bool:
        """Whether the provider's own VAD may cut the agent (options Rule 2)."""
        if self.barge_in.mode != "provider" or not self.turn.barge_in:
            return False  # the guard decides, or nobody does
        block = self.provider_options
        return block is None or block.interrupts is not False

    def _check_memory(self) -> None:
        memory = self.memory
        if memory.scope not in MEMORY_SCOPES:
            hint = did_you_mean(memory.scope, MEMORY_SCOPES)
            fail("memory.scope", f"unknown scope {memory.scope!r}{hint} (agent, all)")
        for key, (low, high) in (
            ("days", MEMORY_DAYS_RANGE),
            ("max_calls", MEMORY_MAX_CALLS_RANGE),
            ("max_chars", MEMORY_MAX_CHARS_RANGE),
        ):
            value = getattr(memory, key)
            if not low <= value <= high:
                fail(f"memory.{key}", f"must be between {low} and {high}, not {value}")

    def amd_message(self, call: CallInfo, now: datetime) -> str | None:
        """The ``amd.message`` for ``call`` (``now`` aware, shown in the agent's timezone)."""
        return self.amd.message_text(call, now.astimezone(self._zone))

    def with_fallback(
        self,
        provider: str,
        *,
        model: str | None = None,
        voice: str | None = None,
        api_key: Secret | str | None = None,
        base_url: str | None = None,
        ca_file: str | None = None,
        options: Mapping[str, Any] | None = None,
        provider_options: ProviderOptions | None = None,
    ) -> Agent:
        """This agent with a fallback: its prompt, greeting, tools and settings on ``provider``.

        The fallback has its own ``options`` and ``provider_options``, never this agent's.

        Raises:
            ConfigError: an invalid fallback (``field`` names it, e.g. ``fallback.provider``).
        """
        try:
            fallback = replace(
                self,
                provider=provider,  # type: ignore[arg-type]  # checked by Agent
                model=model,
                voice=voice,
                api_key=api_key,
                base_url=base_url,
                ca_file=ca_file,
                options=dict(options or {}),
                provider_options=provider_options,
                fallback=None,
            )
        except ConfigError as exc:
            raise ConfigError(
                exc.message, field=f"fallback.{exc.field or ''}".rstrip(".")
            ) from None
        return replace(self, fallback=fallback)

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """The specs of the agent's tools, in order."""
        return tuple(t.spec for t in self.resolved_tools)

    @property
    def zone(self) -> ZoneInfo:
        """The agent's timezone."""
        return self._zone

    def session_config(
        self, call: CallInfo, now: datetime, tools: Sequence[ToolSpec] | None = None
    ) -> SessionConfig:
        """The provider session settings for ``call``, with prompt and greeting filled in.

        Args:
            call: the call (caller, DID, headers...).
            now: an aware datetime (the call's start), shown in the agent's timezone.
            tools: the specs to offer the model; None → all of the agent's tools.
        """
        local = now.astimezone(self._zone)
        options = dict(self.options)
        if self.provider_options is not None:
            options.update(self.provider_options.session_options())
        if self.provider == "local":
            options.setdefault("mode", self.local_mode)
        instructions = self._prompt.fill(call, local)
        if self._prompt.uses_call_data:  # template Rule 1
            instructions += "\n\n" + CALL_DATA_NOTE
        if call.direction == "outbound":
            instructions = OUTBOUND_NOTE.format(to=call.did or "the callee") + instructions
        return SessionConfig(
            instructions=instructions,
            model=self.model,
            voice=self.voice,
            language=self.language,
            temperature=self.temperature,
            tools=self.tool_specs if tools is None else tuple(tools),
            greeting=None if self._greeting is None else self._greeting.fill(call, local),
            turn_detection=self.turn
            if self.provider_interrupts
            else replace(self.turn, barge_in=False),  # the guard decides, or nobody does
            options=options,
            stall_timeout_s=None if self.stall_timeout_ms is None else self.stall_timeout_ms / 1000,
        )


def _set(agent: Agent, name: str, value: object) -> None:
    object.__setattr__(agent, name, value)
