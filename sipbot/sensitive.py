"""What the server log may say of call data no integrator hook redacts: DTMF digits, tool
arguments and tool results (``server.log_sensitive``; docs/HOOKS.md, "Keypresses and tool calls").

Transcript lines go through the ``transcript`` hooks before they are logged or stored
(:mod:`sipbot.hooks`). A card number typed on the keypad, or passed by the model to a tool, does
not: these rules keep it out of the log instead.

Rules:

* Rule 1: at INFO (and any level above DEBUG) the log says *that* a key was pressed, never which:
  :func:`dtmf_line` counts the call's keypresses.
* Rule 2: at INFO a tool call is its name, its id, the *names* of its arguments that the tool
  declares (a name the model made up is counted, not shown: :func:`argument_names`), then its
  outcome and duration (:func:`tool_outcome`) — never an argument's value, a result or an error's
  text (which may quote the arguments, as a refusal or an HTTP service's error body can; the
  runner withholds an exception's text from its traceback), nor a handoff's reason.
* Rule 3: values go to the log only at DEBUG, and only when the operator opted in with
  ``server.log_sensitive: true`` (:func:`log_values`): the digit (``DTMF 4``, as sipbot logged
  it at INFO before this rule), the arguments (``tool NAME({...})``, likewise), the result
  (``tool NAME (ID) result: ...``) and a handoff's reason.
* Rule 4: what the provider receives is not changed: the model still hears the keypress and gets
  the tool's result. The call record keeps tool argument and result values only when
  ``server.records.tool_values`` is true (:func:`record_arguments`, :func:`record_output`);
  it never holds DTMF digits.
* Rule 5: other libraries' DEBUG lines reach the log only with ``server.log_sensitive``: the
  websocket library logs each frame to and from the model at DEBUG (``sipbot run --log-level
  debug`` is otherwise sipbot's own DEBUG lines only; ``sipbot.cli``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, Final

REDACTED: Final = "[redacted]"  # a value the call record does not keep (Rule 4)


def log_values(logger: logging.Logger, opted_in: bool) -> bool:
    """True when a value may be logged now (Rule 3): opted in, and DEBUG enabled."""
    return opted_in and logger.isEnabledFor(logging.DEBUG)


def dtmf_line(count: int) -> str:
    """The INFO text for a call's ``count``-th keypress (Rule 1): ``DTMF * (3 so far)``."""
    return f"DTMF * ({count} so far)"


def argument_names(arguments: Mapping[str, Any], declared: Collection[str]) -> str:
    """The arguments a model passed, by name only (Rule 2).

    Args:
        arguments: the model's arguments.
        declared: the parameter names the tool declares.

    Returns:
        ``"card, amount"``, ``"no arguments"``, or ``"card and 1 undeclared"`` when the model
        passed a name the tool does not declare (its text may be anything, even a value).
    """
    names = [name for name in arguments if name in declared]
    undeclared = len(arguments) - len(names)
    shown = ", ".join(names)
    if undeclared and shown:
        return f"{shown} and {undeclared} undeclared"
    if undeclared:
        return f"{undeclared} undeclared"
    return shown or "no arguments"


def tool_outcome(error: str | None, cancelled: bool) -> str:
    """``ok``, ``error`` or ``cancelled`` (Rule 2: the error's text is not part of it)."""
    if cancelled:
        return "cancelled"
    return "ok" if error is None else "error"


def record_arguments(arguments: Any, keep: bool) -> Any:
    """A tool call's arguments as the call record keeps them (Rule 4): as they are when
    ``keep``, else the names the model passed, each with :data:`REDACTED` for its value."""
    if keep:
        return arguments
    if isinstance(arguments, Mapping):
        return dict.fromkeys(arguments, REDACTED)
    return REDACTED


def record_output(output: Any, keep: bool) -> Any:
    """A tool call's result (or error text) as the call record keeps it (Rule 4)."""
    return output if keep else REDACTED
