"""An agent's answering-machine detection setting (``amd:``), for the calls sipbot places.

```yaml
amd:
  enabled: true            # default true once the block is there; a dial request may override
  on_machine: message      # hangup | message | talk
  on_unknown: talk         # the same choices, for a line where nobody could be told apart
  message: "Hello {var.name}, this is the bike shop: your bike is ready."   # the agent says it
  message_audio: null      # or a WAV file played as is (one of the two with ``message``)
  max_wait_s: 5            # the verdict comes at most this long after the callee's first audio
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sipbot.dialplan.fields import did_you_mean, fail, with_field
from sipbot.dialplan.template import Template
from sipbot.domain import CallInfo

AmdAction = Literal["hangup", "message", "talk"]
AMD_ACTIONS: tuple[AmdAction, ...] = ("hangup", "message", "talk")
MIN_WAIT_S = 1.0  # below this not even a "hello?" and the pause after it fit
MAX_WAIT_S = 30.0  # beyond this the callee has long hung up on the silence


def check_action(value: Any) -> AmdAction:
    """``hangup``, ``message`` or ``talk``.

    Raises:
        ConfigError: anything else.
    """
    for action in AMD_ACTIONS:
        if value == action:
            return action
    hint = did_you_mean(str(value), AMD_ACTIONS)
    fail("", f"must be hangup, message or talk, not {value!r}{hint}")


@dataclass(frozen=True, slots=True)
class AmdSettings:
    """Answering-machine detection for an agent's outbound calls (see the module docstring).

    Args:
        enabled: detect on this agent's outbound calls (a dial request may say otherwise).
        on_machine: what to do when a machine answered.
        on_unknown: what to do when the detector could not tell (a silent line).
        message: what the agent says to a machine, a template (``{var.NAME}`` and the rest).
        message_audio: a WAV file played to a machine instead.
        max_wait_s: the verdict comes at most this long after the callee's first audio.

    Raises:
        ConfigError: an invalid value (``field`` names it, relative to ``amd``).
    """

    enabled: bool = False
    on_machine: AmdAction = "hangup"
    on_unknown: AmdAction = "talk"
    message: str | None = None
    message_audio: str | None = None
    max_wait_s: float = 5.0
    _message: Template | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "on_machine", with_field("on_machine", check_action, self.on_machine)
        )
        object.__setattr__(
            self, "on_unknown", with_field("on_unknown", check_action, self.on_unknown)
        )
        template = (
            None if self.message is None else with_field("message", Template.parse, self.message)
        )
        object.__setattr__(self, "_message", template)
        if self.message is not None and self.message_audio is not None:
            fail("message_audio", "give message (the agent says it) or message_audio, not both")
        no_message = self.message is None and self.message_audio is None
        if no_message and "message" in (self.on_machine, self.on_unknown):
            which = "on_machine" if self.on_machine == "message" else "on_unknown"
            fail(
                which, "message needs message: (text the agent says) or message_audio: (a WAV file)"
            )
        if self.message_audio is not None and not os.path.isfile(self.message_audio):
            fail("message_audio", f"no such file {self.message_audio!r}")
        if not MIN_WAIT_S <= self.max_wait_s <= MAX_WAIT_S:
            fail(
                "max_wait_s",
                f"must be between {MIN_WAIT_S:g} and {MAX_WAIT_S:g}, not {self.max_wait_s:g}",
            )

    def message_text(self, call: CallInfo, now: datetime) -> str | None:
        """The message for ``call`` (``now`` in the agent's timezone), or None."""
        return None if self._message is None else self._message.fill(call, now)
