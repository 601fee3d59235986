"""What the operations layer needs of the server (a Protocol: ``ops/`` never imports
``server.py``, which imports ``ops/``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sipbot.call import Call
    from sipbot.config import Config
    from sipbot.ops.admission import Admission
    from sipbot.ops.looplag import LoopLagMonitor
    from sipbot.ops.metrics import Metrics
    from sipbot.ops.observe import RecentCalls, SessionWatch
    from sipbot.outbound import DialRequest, DialStatus


class Server(Protocol):
    """The running server as ``/api``, ``/metrics`` and the page see it."""

    @property
    def config(self) -> Config: ...

    @property
    def calls(self) -> Mapping[str, Call]: ...

    @property
    def watches(self) -> Mapping[str, SessionWatch]: ...

    @property
    def routes(self) -> Mapping[str, str]: ...

    @property
    def recent(self) -> RecentCalls: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def lag(self) -> LoopLagMonitor: ...

    @property
    def records(self) -> Any: ...  # the records writer, or None when records are off

    @property
    def calls_total(self) -> int: ...

    @property
    def started_at(self) -> float: ...

    @property
    def drained(self) -> asyncio.Event: ...

    def drain(self) -> bool:
        """Start draining; False when already draining."""
        ...

    async def dial(
        self, request: DialRequest, on_status: Callable[[DialStatus], None] | None = None
    ) -> str:
        """Place an outbound call; its Call-ID at once (raises ``DialError`` first)."""
        ...
