"""The YAML shape of ``agents:``, ``tools:``, ``trunks:`` and ``routes:`` (pydantic models).

Only the structure is checked here (unknown keys, scalar types, required keys); names are
resolved and values checked by :func:`sipbot.dialplan.build.build_dialplan`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sipbot.tools.http import DEFAULT_HTTP_TIMEOUT_S


class StrictModel(BaseModel):
    """Base of every schema model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnModel(StrictModel):
    threshold: float = 0.5
    silence_ms: int = 500
    prefix_ms: int = 300
    barge_in: bool = True


class BargeInModel(StrictModel):
    mode: str = "provider"
    min_speech_ms: int = 800


class LocalModel(StrictModel):
    mode: str = "echo"


class AmdModel(StrictModel):
    enabled: bool = True  # the block is the opt-in
    on_machine: str = "hangup"
    on_unknown: str = "talk"
    message: str | None = None
    message_audio: str | None = None
    max_wait_s: float = 5.0


class GeminiOptionsModel(StrictModel):
    """``agents.NAME.gemini``: typed Gemini Live options (checked by ``GeminiOptions``)."""

    proactive_audio: bool | None = None
    affective_dialog: bool | None = None
    thinking_budget: int | None = None
    activity_handling: str | None = None


class OpenAIOptionsModel(StrictModel):
    """``agents.NAME.openai``: typed OpenAI Realtime options (checked by ``OpenAIOptions``)."""

    turn_detection: str | None = None
    eagerness: str | None = None
    noise_reduction: str | None = None
    transcription_model: str | None = None
    interrupt_response: bool | None = None


class MemoryModel(StrictModel):
    """``agents.NAME.memory``: returning callers (the block is the opt-in)."""

    enabled: bool = True
    days: int = 30
    max_calls: int = 3
    max_chars: int = 600
    scope: str = "agent"


class FallbackModel(StrictModel):
    """``agents.NAME.fallback``: the provider a call switches to when the agent's is lost."""

    provider: str
    model: str | None = None
    voice: str | None = None
    api_key: Any = None  # an EnvString (kept as such)
    base_url: str | None = None
    ca_file: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    gemini: GeminiOptionsModel | None = None
    openai: OpenAIOptionsModel | None = None


class AgentModel(StrictModel):
    provider: str
    model: str | None = None
    voice: str | None = None
    language: str | None = None
    prompt: str = ""
    greeting: str | None = None
    tools: list[str] = Field(default_factory=list)
    transfer_allow: list[str] = Field(default_factory=list)
    turn: TurnModel = Field(default_factory=TurnModel)
    max_duration_s: float = 3600.0
    recording: bool = False
    codecs: list[str] = Field(default_factory=list)
    temperature: float | None = None
    timezone: str | None = None
    api_key: Any = None  # an EnvString (kept as such: pydantic would make it a plain str)
    base_url: str | None = None
    ca_file: str | None = None
    local: LocalModel = Field(default_factory=LocalModel)
    options: dict[str, Any] = Field(default_factory=dict)
    tool_timeout_s: float = 10.0
    filler_after_ms: int | None = None
    srtp: Any = None  # off | optional | required (YAML's bare off is false); checked by Agent
    barge_in: BargeInModel = Field(default_factory=BargeInModel)
    transfer_timeout_s: float = 10.0
    transfer_briefing: str | None = None  # a WAV file
    transfer_hold: str | None = None  # a WAV file
    amd: AmdModel | None = None
    stall_timeout_ms: int | None = None
    fallback: FallbackModel | None = None
    handoff_allow: list[str] = Field(default_factory=list)
    gemini: GeminiOptionsModel | None = None
    openai: OpenAIOptionsModel | None = None
    memory: MemoryModel | None = None


class HttpModel(StrictModel):
    url: str
    timeout_s: float = DEFAULT_HTTP_TIMEOUT_S
    headers: dict[str, Any] = Field(default_factory=dict)  # EnvStrings kept


class ToolModel(StrictModel):
    python: str | None = None
    http: HttpModel | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    timeout_s: float | None = None


class OutboundModel(StrictModel):
    proxy: str | None = None
    domain: str | None = None
    transport: str | None = None
    caller_id: str | None = None
    pai: bool = True
    auth_user: str | None = None
    password: Any = None  # an EnvString (kept as such)
    codecs: list[str] = Field(default_factory=list)
    max_calls: int | None = Field(default=None, ge=1)
    cps: float | None = Field(default=None, gt=0)
    queue: int = Field(default=0, ge=0)
    queue_timeout_s: float = Field(default=30.0, gt=0)
    ring_timeout_s: float = Field(default=30.0, gt=0)


class TrunkModel(StrictModel):
    source: list[str] = Field(default_factory=list)
    description: str | None = None
    registrar: str | list[str] | None = None
    user: str | None = None
    auth_user: str | None = None
    password: Any = None  # an EnvString (kept as such)
    domain: str | None = None
    expires: int = 600
    outbound_proxy: str | None = None
    transport: str | None = None
    contact_user: str | None = None
    keepalive_s: float = Field(default=30.0, ge=0)
    retry_min_s: float = Field(default=5.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    did_header: str | None = None
    srtp: Any = None  # off | optional | required; checked by build_trunk
    outbound: OutboundModel | None = None


class MatchModel(StrictModel):
    did: Any = None
    caller: Any = None
    display_name: Any = None
    source: Any = None
    trunk: str | None = None
    headers: dict[str, Any] = Field(default_factory=dict)
    days: Any = None
    hours: Any = None
    dates: list[Any] = Field(default_factory=list)
    timezone: str | None = None


class RouteModel(StrictModel):
    name: str | None = None
    match: MatchModel = Field(default_factory=MatchModel)
    answer: str | None = None
    reject: Any = None
    transfer: str | None = None
    dtmf: dict[str, Any] = Field(default_factory=dict)


class DialplanModel(StrictModel):
    """The dialplan part of a config file (the loader adds ``server:``)."""

    timezone: str = "UTC"
    agents: dict[str, AgentModel] = Field(default_factory=dict)
    tools: dict[str, ToolModel] = Field(default_factory=dict)
    trunks: dict[str, TrunkModel] = Field(default_factory=dict)
    routes: list[RouteModel] = Field(default_factory=list)
