"""Make the provider an agent asks for.

The cloud adapters are imported only when an agent uses them, so a server that only runs the
local provider never loads the SDKs (they take a second to import).
"""

from __future__ import annotations

import os

from sipbot.dialplan import Agent
from sipbot.errors import ConfigError
from sipbot.providers.base import Provider

API_KEY_ENV = {"gemini": "GEMINI_API_KEY", "openai": "OPENAI_API_KEY"}


def api_key_for(agent: Agent) -> str:
    """The agent's key (from the config's ``${VAR}``), else the provider's usual variable."""
    if agent.api_key is not None:
        key = agent.api_key if isinstance(agent.api_key, str) else agent.api_key.reveal()
        return key
    return os.environ.get(API_KEY_ENV.get(agent.provider, ""), "")


def make_provider(agent: Agent) -> Provider:
    """A provider for ``agent`` (one per agent; it opens a session per call).

    Raises:
        ConfigError: the provider cannot be made (e.g. no API key).
    """
    if agent.provider == "local":
        from sipbot.providers.local import LocalProvider

        return LocalProvider(mode=agent.local_mode)
    if agent.provider == "gemini":
        from sipbot.providers.gemini import GeminiProvider

        if agent.model:
            return GeminiProvider(
                api_key_for(agent),
                model=agent.model,
                base_url=agent.base_url,
                ca_file=agent.ca_file,
            )
        return GeminiProvider(api_key_for(agent), base_url=agent.base_url, ca_file=agent.ca_file)
    if agent.provider == "openai":
        from sipbot.providers.openai import OpenAIProvider

        if agent.model:
            return OpenAIProvider(
                api_key_for(agent), model=agent.model, websocket_base_url=agent.base_url
            )
        return OpenAIProvider(api_key_for(agent), websocket_base_url=agent.base_url)
    raise ConfigError(f"unknown provider {agent.provider!r}", field=f"agents.{agent.name}.provider")
