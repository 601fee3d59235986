"""sipbot: answer phone calls with a realtime speech-to-speech AI.

For teams that prefer code to YAML::

    from sipbot import serve
    from sipbot.dialplan import Agent, Answer, Dialplan, Route

    echo = Agent("echo", provider="local")
    serve(Dialplan([Route("default", Answer(echo))]), listen=["udp:0.0.0.0:5060"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipbot.dialplan import Dialplan
    from sipbot.hook_events import Hook

from sipbot.version import __version__

__all__ = ["__version__", "serve"]


def serve(
    dialplan: Dialplan,
    *,
    listen: Sequence[str] = ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"),
    public_address: str | None = None,
    rtp_ports: str = "20000-29999",
    server: Mapping[str, Any] | None = None,
    log_level: str = "info",
    hooks: Sequence[Hook] = (),
) -> int:
    """Run a sipbot server for ``dialplan`` until SIGTERM/SIGINT; returns the exit code.

    Args:
        dialplan: agents and routes built in Python (the same objects a YAML file loads into).
        listen: ``transport:host:port`` addresses.
        public_address: ``host`` or ``host:port`` advertised to peers (never 0.0.0.0).
        rtp_ports: ``MIN-MAX`` RTP port range.
        server: any other ``server:`` settings, as in the YAML file (docs/CONFIG.md).
        log_level: debug, info, warning or error.
        hooks: integrator hooks (:func:`sipbot.hook_events.python_hook`,
            :func:`~sipbot.hook_events.webhook_hook`; docs/HOOKS.md).

    Raises:
        ConfigError: a server setting is invalid.
    """
    from sipbot.cli import run_config
    from sipbot.config import config_from_objects

    settings: dict[str, Any] = {key: dict(value) for key, value in (server or {}).items()}
    sip = settings.setdefault("sip", {})
    sip.setdefault("listen", list(listen))
    if public_address is not None:
        sip.setdefault("public_address", public_address)
    settings.setdefault("media", {}).setdefault("rtp_ports", rtp_ports)
    settings.setdefault("log_level", log_level)
    return run_config(config_from_objects(dialplan, settings, hooks=hooks))
