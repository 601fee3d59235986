"""Built-in telephony tools, enabled per agent: ``hang_up``, ``transfer_call``, ``send_dtmf``,
``get_caller_info``, ``handoff``.

``handoff`` is made per agent by :class:`HandoffTool` with the agent's allow-list of agents
(``handoff_allow``), checked before the call is asked to hand over.

``transfer_call`` is made per agent by :func:`transfer_call` with the agent's allow-list; the
destination is checked against it *before* :meth:`CallControl.transfer` is called, so a model
talked into "transfer me to +1900…" gets a :class:`~sipbot.errors.ToolNotAllowed` error result
and the call never sends that REFER.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sipbot.errors import ToolDefinitionError, ToolError, ToolNotAllowed
from sipbot.tools.context import CallHandoff, ToolContext
from sipbot.tools.registry import PythonTool, tool

BUILTIN_NAMES = ("hang_up", "transfer_call", "send_dtmf", "get_caller_info", "handoff")
DTMF_RE = re.compile(r"[0-9*#A-D]{1,32}")
MAX_TRANSFER_TIMEOUT_S = 60.0  # an agent's longest wait for a REFER's final NOTIFY
# transfer_call waits for the outcome: the REFER's own transaction (64·T1 = 32 s at most) plus
# the longest NOTIFY wait — and for a warm transfer the target's ring time (30 s) and the
# briefing — with room to spare (the call bounds the waits, not this)
TRANSFER_TOOL_TIMEOUT_S = 240.0

# A destination is a bare URI: no display name, parameters, headers or spaces, which could
# smuggle a different target past a pattern; ASCII only ([0-9], not \d: no look-alike digits).
_SIP_DEST_RE = re.compile(
    r"((?i:sips?)):([A-Za-z0-9+*#._~!$&'()=,-]+)@([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
)
_TEL_DEST_RE = re.compile(r"((?i:tel)):(\+?[0-9*#A-D().-]+)")
_TEL_VISUAL = str.maketrans("", "", "().-")  # RFC 3966 §5.1.1: visual separators do not count


@tool
async def hang_up(context: ToolContext) -> str:
    """End the call. Say goodbye first: the call ends after the current sentence has played."""
    await context.control.hang_up()
    return "the call will end after this sentence"


@tool
async def send_dtmf(digits: str, context: ToolContext) -> str:
    """Press keys on the phone keypad (DTMF), e.g. to navigate an automated phone menu.

    Args:
        digits: the keys to press, in order: 0-9, *, # (and A-D).
    """
    keys = digits.replace(" ", "").upper()
    if not DTMF_RE.fullmatch(keys):
        raise ToolError(f"invalid DTMF digits {digits!r}: use 0-9, *, # or A-D (at most 32)")
    await context.control.send_dtmf(keys)
    return f"sent {keys}"


@tool
async def get_caller_info(context: ToolContext) -> dict[str, str]:
    """Get the caller's phone number and name, and the number they called."""
    info = context.call
    return {"caller": info.caller, "display_name": info.display_name, "did": info.did}


class TransferPolicy:
    """An allow-list of transfer destinations.

    Patterns are ``sip:``, ``sips:`` or ``tel:`` URIs where ``*`` stands for any run of
    characters within one part (user, host) and never crosses ``@`` or ``:``:
    ``sip:*@pbx.example.com``, ``sip:+4930*@trunk.example.com``, ``tel:+1800*``.
    Destinations and patterns are compared normalized: scheme and host lower-case, a
    ``tel:`` number without its visual separators ``().-``; a destination with anything
    else (parameters, headers, a display name, spaces, non-ASCII) matches nothing.

    Raises:
        ToolDefinitionError: a pattern is not such a URI.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._compiled = [_compile_pattern(p) for p in self.patterns]

    def check(self, destination: str) -> str:
        """Return the normalized destination URI if a pattern allows it.

        Raises:
            ToolNotAllowed: the destination is malformed or matches no pattern.
        """
        normalized = _normalize(destination.strip())
        if normalized is not None and any(p.fullmatch(normalized) for p in self._compiled):
            return normalized
        allowed = ", ".join(self.patterns) or "none"
        raise ToolNotAllowed(f"transfer to {destination!r} is not allowed (allowed: {allowed})")


def _normalize(uri: str) -> str | None:
    match = _SIP_DEST_RE.fullmatch(uri) or _TEL_DEST_RE.fullmatch(uri)
    if match is None:
        return None
    scheme, user, *rest = match.groups()
    if scheme.lower() == "tel":
        return f"tel:{user.translate(_TEL_VISUAL)}"
    host, port = rest
    return f"{scheme.lower()}:{user}@{host.lower()}{port or ''}"


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    probe = _normalize(pattern.strip().replace("*", "9"))
    if probe is None or any(c in pattern for c in "?[]"):
        raise ToolDefinitionError(
            f"invalid transfer pattern {pattern!r}: expected a URI such as sip:*@pbx.example.com"
        )
    scheme, _, rest = pattern.strip().partition(":")
    if scheme.lower() == "tel":
        rest = rest.translate(_TEL_VISUAL)
    else:
        user, _, hostport = rest.rpartition("@")
        rest = f"{user}@{hostport.lower()}"
    parts = [re.escape(part) for part in f"{scheme.lower()}:{rest}".split("*")]
    return re.compile(r"[^@:;?<>\s]*".join(parts))


class TransferCallTool(PythonTool):
    """The ``transfer_call`` tool of one agent, bound to its :class:`TransferPolicy`.

    Raises:
        ToolDefinitionError: ``allow`` is empty or holds an invalid pattern.
    """

    def __init__(self, allow: Iterable[str]) -> None:
        self.policy = TransferPolicy(allow)
        if not self.policy.patterns:
            raise ToolDefinitionError("transfer_call needs at least one allowed destination")
        policy = self.policy

        async def transfer_call(destination: str, context: ToolContext, warm: bool = False) -> str:
            """Transfer the caller.

            Args:
                destination: the SIP URI to transfer to, e.g. sip:200@pbx.example.com.
                warm: true to call the destination first and brief them while the caller is
                    on hold, then connect the two (attended transfer); false or absent: blind.
            """
            uri = policy.check(destination)
            outcome = await context.control.transfer(uri, warm=warm)
            return transfer_result(uri, outcome)

        description = (
            "Transfer the caller to another phone number or SIP address (blind, or warm: the "
            "destination is called and briefed first while the caller holds). The result says "
            "what happened: when the target answered, your part of the call ends; when it was "
            "busy, did not answer or refused, the caller is still with you. "
            "Allowed destinations: " + ", ".join(policy.patterns)
        )
        super().__init__(transfer_call, description=description, timeout_s=TRANSFER_TOOL_TIMEOUT_S)


def transfer_result(uri: str, outcome: str) -> str:
    """What ``transfer_call`` tells the model: the outcome first, in words it can repeat."""
    if outcome == "transferred":
        return f"transferred: the caller is now connected to {uri}"
    return (
        f"{outcome}: the transfer to {uri} did not happen; the caller is still on the line "
        "with you, tell them"
    )


class HandoffTool(PythonTool):
    """The ``handoff`` tool of one agent: hands the call to an agent of ``allow`` only.

    Raises:
        ToolDefinitionError: ``allow`` is empty.
    """

    def __init__(self, allow: Iterable[str]) -> None:
        self.allow = tuple(allow)
        if not self.allow:
            raise ToolDefinitionError("handoff needs at least one agent to hand over to")
        allowed = self.allow

        async def handoff(agent: str, reason: str, context: ToolContext) -> str:
            """Hand the call over to another agent.

            Args:
                agent: the agent to take over the call.
                reason: why, in a few words (the other agent is told).
            """
            if agent not in allowed:
                raise ToolNotAllowed(
                    f"handoff to {agent!r} is not allowed (allowed: {', '.join(allowed)})"
                )
            control = context.control
            if not isinstance(control, CallHandoff):
                raise ToolError("this call cannot be handed over")
            await control.handoff(agent, reason)
            return f"the call goes to {agent} now"

        description = (
            "Hand the call over to another agent, who continues the conversation with what was "
            "said so far. Say a short sentence to the caller first. Agents: " + ", ".join(allowed)
        )
        super().__init__(handoff, description=description)


def transfer_call(allow: Iterable[str]) -> TransferCallTool:
    """The ``transfer_call`` tool, allowed to transfer only to ``allow`` (see TransferPolicy)."""
    return TransferCallTool(allow)


def builtin_tool(
    name: str, transfer_allow: Iterable[str] = (), handoff_allow: Iterable[str] = ()
) -> PythonTool:
    """The built-in tool ``name`` (one of :data:`BUILTIN_NAMES`).

    Raises:
        ToolDefinitionError: an unknown name, or ``transfer_call`` without a valid allow-list.
    """
    if name == "transfer_call":
        return TransferCallTool(transfer_allow)
    if name == "handoff":
        return HandoffTool(handoff_allow)
    fixed = {"hang_up": hang_up, "send_dtmf": send_dtmf, "get_caller_info": get_caller_info}
    if name not in fixed:
        raise ToolDefinitionError(f"unknown built-in tool {name!r}")
    return fixed[name]
