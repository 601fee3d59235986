"""Typed provider options of an agent: the ``gemini:`` and ``openai:`` blocks (docs/CONFIG.md).

Each block is a frozen dataclass that checks its values when made (types, enums, ranges) and
says how it reaches the provider: :meth:`session_options` gives the ``SessionConfig.options``
keys the provider's wire module reads (``sipbot/providers/gemini_wire.py``,
``openai_wire.py``), and :attr:`interrupts` the provider's own interruption setting, which the
agent folds into ``SessionConfig.turn_detection.barge_in`` under its barge-in rules:

* Rule 1: options belong to one provider; a block for another provider than the agent's (or the
  fallback's) is an error naming both. A fallback has its own block, never its agent's.
* Rule 2: where sipbot's barge-in guard runs (``barge_in.mode: guard``) or nobody interrupts
  (``mode: off``, ``turn.barge_in: false``), the provider's interruption is off (Conversation
  Rule 10); an option turning it on there is an error, one turning it off is allowed anywhere.
* Rule 3: a key of the free-form ``options:`` that a typed block covers (OpenAI ``vad``,
  ``eagerness``, ``noise_reduction``, ``transcription_model``) is checked the same way, and may
  not be given both ways.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from sipbot.dialplan.fields import did_you_mean, fail
from sipbot.errors import ConfigError

ActivityHandling = Literal["start_of_activity_interrupts", "no_interruption"]
ACTIVITY_HANDLINGS: tuple[ActivityHandling, ...] = (
    "start_of_activity_interrupts",
    "no_interruption",
)
THINKING_BUDGET_DYNAMIC = -1  # the model decides (the service's "AUTOMATIC")
THINKING_BUDGET_MAX = 24_576  # tokens: the largest budget of the 2.5 Flash family
TurnDetectionType = Literal["server_vad", "semantic_vad"]
TURN_DETECTION_TYPES: tuple[TurnDetectionType, ...] = ("server_vad", "semantic_vad")
Eagerness = Literal["low", "medium", "high", "auto"]
EAGERNESS: tuple[Eagerness, ...] = ("low", "medium", "high", "auto")
NoiseReduction = Literal["near_field", "far_field"]
NOISE_REDUCTIONS: tuple[NoiseReduction, ...] = ("near_field", "far_field")
# A BCP-47 language tag as the dialplan takes it: en, en-US, pt-BR, cmn-Hans-CN.
LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
# Free-form ``options:`` keys an OpenAI block covers (Rule 3): options key → block field.
OPENAI_OPTION_KEYS = {
    "vad": "turn_detection",
    "eagerness": "eagerness",
    "noise_reduction": "noise_reduction",
    "transcription_model": "transcription_model",
}


def _choice(field: str, value: str | None, choices: tuple[str, ...]) -> Any:
    """``value`` lower-cased if it is one of ``choices`` (None passes), else a ConfigError."""
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    hint = did_you_mean(str(value), choices)
    fail(field, f"unknown value {value!r}{hint} ({', '.join(choices)})")


def _flag(field: str, value: object) -> None:
    if value is not None and not isinstance(value, bool):
        fail(field, f"must be true or false, not {value!r}")


@dataclass(frozen=True, slots=True)
class GeminiOptions:
    """An agent's ``gemini:`` block (Gemini Live ``LiveConnectConfig`` settings).

    Args:
        proactive_audio: ``proactivity.proactive_audio``: the model may stay silent when the
            audio is not meant for it. None → not sent (the service's default, off).
        affective_dialog: ``enable_affective_dialog``: the model adapts to the caller's tone.
        thinking_budget: ``thinking_config.thinking_budget`` in tokens: 0 no thinking, -1 the
            model decides, at most THINKING_BUDGET_MAX. None → the model's default.
        activity_handling: ``realtime_input_config.activity_handling``:
            ``start_of_activity_interrupts`` or ``no_interruption`` (the caller's speech never
            cuts the model). None → from ``barge_in``/``turn`` (Rule 2).

    Raises:
        ConfigError: a value of the wrong type or out of range (``field`` names the key).
    """

    proactive_audio: bool | None = None
    affective_dialog: bool | None = None
    thinking_budget: int | None = None
    activity_handling: ActivityHandling | None = None

    provider = "gemini"

    def __post_init__(self) -> None:
        _flag("proactive_audio", self.proactive_audio)
        _flag("affective_dialog", self.affective_dialog)
        budget = self.thinking_budget
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, int):
                fail("thinking_budget", f"must be a whole number of tokens, not {budget!r}")
            if not THINKING_BUDGET_DYNAMIC <= budget <= THINKING_BUDGET_MAX:
                fail(
                    "thinking_budget",
                    f"must be -1 (dynamic), 0 (off) or up to {THINKING_BUDGET_MAX}, not {budget}",
                )
        handling = _choice("activity_handling", self.activity_handling, ACTIVITY_HANDLINGS)
        object.__setattr__(self, "activity_handling", handling)

    @property
    def interrupts(self) -> bool | None:
        """Whether the caller's speech cuts the model, if this block says (Rule 2)."""
        if self.activity_handling is None:
            return None
        return self.activity_handling == "start_of_activity_interrupts"

    @property
    def interruption_key(self) -> str:
        """The key that sets :attr:`interrupts` (for error messages)."""
        return "activity_handling"

    def session_options(self) -> dict[str, Any]:
        """The ``SessionConfig.options`` keys ``gemini_wire.connect_config`` maps."""
        out: dict[str, Any] = {}
        for key in ("proactive_audio", "affective_dialog", "thinking_budget"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    """An agent's ``openai:`` block (OpenAI Realtime ``session.update`` settings).

    Args:
        turn_detection: ``audio.input.turn_detection.type``: ``server_vad`` (default; it uses
            ``turn``'s threshold and timings) or ``semantic_vad`` (a model judges when the
            caller is done).
        eagerness: ``semantic_vad``'s ``eagerness``: ``low``, ``medium``, ``high`` or ``auto``
            (with ``semantic_vad`` only). None → ``auto``.
        noise_reduction: ``audio.input.noise_reduction.type``: ``near_field`` (a handset or
            headset) or ``far_field`` (a speakerphone). None → none.
        transcription_model: the caller transcription model. None → the adapter's default.
        interrupt_response: ``turn_detection.interrupt_response``. None → from
            ``barge_in``/``turn`` (Rule 2).

    Raises:
        ConfigError: a value of the wrong type or an unknown one (``field`` names the key).
    """

    turn_detection: TurnDetectionType | None = None
    eagerness: Eagerness | None = None
    noise_reduction: NoiseReduction | None = None
    transcription_model: str | None = None
    interrupt_response: bool | None = None

    provider = "openai"

    def __post_init__(self) -> None:
        kind = _choice("turn_detection", self.turn_detection, TURN_DETECTION_TYPES)
        object.__setattr__(self, "turn_detection", kind)
        object.__setattr__(self, "eagerness", _choice("eagerness", self.eagerness, EAGERNESS))
        reduction = _choice("noise_reduction", self.noise_reduction, NOISE_REDUCTIONS)
        object.__setattr__(self, "noise_reduction", reduction)
        if self.eagerness is not None and kind != "semantic_vad":
            fail("eagerness", "eagerness needs turn_detection: semantic_vad")
        model = self.transcription_model
        if model is not None and (not isinstance(model, str) or not model.strip()):
            fail("transcription_model", f"must be a model name, not {model!r}")
        _flag("interrupt_response", self.interrupt_response)

    @property
    def interrupts(self) -> bool | None:
        """Whether the caller's speech cuts the model, if this block says (Rule 2)."""
        return self.interrupt_response

    @property
    def interruption_key(self) -> str:
        """The key that sets :attr:`interrupts` (for error messages)."""
        return "interrupt_response"

    def session_options(self) -> dict[str, Any]:
        """The ``SessionConfig.options`` keys ``openai_wire.session_update`` maps."""
        out: dict[str, Any] = {}
        for key, name in OPENAI_OPTION_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = value
        return out


ProviderOptions = GeminiOptions | OpenAIOptions
OPTION_BLOCKS: dict[str, type[GeminiOptions] | type[OpenAIOptions]] = {
    "gemini": GeminiOptions,
    "openai": OpenAIOptions,
}


def with_free_options(
    provider: str, block: ProviderOptions | None, options: Mapping[str, Any]
) -> ProviderOptions | None:
    """``block`` with the typed keys of the free-form ``options`` folded in (Rule 3).

    Raises:
        ConfigError: a typed key of ``options`` has a bad value (``field`` ``options.KEY``), or
            is also set in the block.
    """
    if provider != "openai":
        return block
    given = {key: options[key] for key in OPENAI_OPTION_KEYS if key in options}
    if not given:
        return block
    merged: dict[str, Any] = {}
    if isinstance(block, OpenAIOptions):
        merged = {f.name: getattr(block, f.name) for f in fields(block)}
    for key, value in given.items():
        name = OPENAI_OPTION_KEYS[key]
        current = merged.get(name)
        if current is not None and not _same(current, value):  # same: folded in before
            fail(f"options.{key}", f"openai.{name} is also set: give it once")
        merged[name] = value
    try:
        return OpenAIOptions(**merged)
    except ConfigError as exc:  # it names the block's field: name the options key instead
        back = {name: key for key, name in OPENAI_OPTION_KEYS.items()}
        key = back.get(exc.field or "", exc.field or "")
        where = f"options.{key}" if key in given else f"openai.{exc.field}"
        raise ConfigError(exc.message, field=where) from None


def _same(current: Any, value: Any) -> bool:
    """Whether ``value`` is what the block already holds (enums compare lower-cased)."""
    if isinstance(current, str) and isinstance(value, str):
        return current == value.lower() or current == value
    return bool(current == value)


def check_language(provider: str, language: str | None) -> None:
    """A ``language:`` as ``provider`` takes it (BCP-47; OpenAI transcribes by ISO-639-1).

    Raises:
        ConfigError: not a language tag, or (OpenAI) its first part is not two letters.
    """
    if language is None:
        return
    if not isinstance(language, str) or not LANGUAGE_RE.fullmatch(language):
        fail("language", f"not a language tag such as en or en-US: {language!r}")
    primary = language.split("-")[0]
    if provider == "openai" and len(primary) != 2:
        fail(
            "language",
            f"openai transcribes with an ISO-639-1 language: {primary!r} is not a two-letter code",
        )
