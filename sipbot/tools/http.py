"""HTTP tools declared in a dialplan: POST the model's arguments to a service, return its answer.

Request (``Content-Type: application/json``)::

    {"tool": "crm", "arguments": {...}, "call": {"call_id": ..., "caller": ..., "did": ...,
     "display_name": ..., "headers": {...}}}

Response: a JSON body (by ``Content-Type``) is the result as parsed JSON; any other body is the
result as text. A non-2xx status, a timeout or a connection error is a
:class:`~sipbot.errors.ToolError` whose message the model hears.

The client is ``httpx2`` (already installed as a dependency of both provider SDKs), async, one
connection pool per event loop, shared by all calls (no thread per request).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import Any

import httpx2

from sipbot.domain import ToolSpec
from sipbot.errors import ToolError
from sipbot.secret import Secret
from sipbot.tools.context import ToolContext
from sipbot.tools.registry import check_tool_name

DEFAULT_HTTP_TIMEOUT_S = 5.0
ERROR_BODY_CHARS = 200  # how much of an error response the model hears
_TIMEOUT_MARGIN_S = 1.0  # the runner's timeout is later than the HTTP one, which says more

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def _client() -> httpx2.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx2.AsyncClient(follow_redirects=False, trust_env=False)
        _clients[loop] = client
    return client


async def aclose_http_clients() -> None:
    """Close this event loop's shared HTTP client (server shutdown, test teardown)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


class HttpTool:
    """A tool served by an HTTP endpoint.

    Args:
        name: the tool name the model sees.
        url: ``http://`` or ``https://`` URL to POST to.
        description: what the tool does, for the model.
        parameters: JSON schema (type object) of the arguments.
        timeout_s: HTTP timeout (connect + read).
        headers: extra request headers; values are secrets (masked in reprs and logs).
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        description: str,
        parameters: Mapping[str, Any] | None = None,
        timeout_s: float = DEFAULT_HTTP_TIMEOUT_S,
        headers: Mapping[str, Secret | str] | None = None,
    ) -> None:
        self.url = url
        self.http_timeout_s = timeout_s
        self.headers = {
            k: v if isinstance(v, Secret) else Secret(v) for k, v in (headers or {}).items()
        }
        schema = dict(parameters) if parameters else {"type": "object", "properties": {}}
        self._spec = ToolSpec(check_tool_name(name), description, schema)

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    @property
    def timeout_s(self) -> float:
        return self.http_timeout_s + _TIMEOUT_MARGIN_S

    def __repr__(self) -> str:
        return f"<HttpTool {self._spec.name} {self.url}>"

    async def invoke(self, context: ToolContext, arguments: Mapping[str, Any]) -> Any:
        info = context.call
        body = {
            "tool": self._spec.name,
            "arguments": dict(arguments),
            "call": {
                "call_id": info.call_id,
                "caller": info.caller,
                "did": info.did,
                "display_name": info.display_name,
                "headers": dict(info.headers),
            },
        }
        headers = {k: v.reveal() for k, v in self.headers.items()}
        try:
            response = await _client().post(
                self.url, json=body, headers=headers, timeout=self.http_timeout_s
            )
        except httpx2.TimeoutException:
            raise ToolError(f"the {self._spec.name} service did not answer in time") from None
        except httpx2.HTTPError as exc:
            name = type(exc).__name__
            raise ToolError(f"the {self._spec.name} service cannot be reached ({name})") from None
        return _result(self._spec.name, response)


def _result(name: str, response: httpx2.Response) -> Any:
    text = response.text
    if not 200 <= response.status_code < 300:
        detail = text[:ERROR_BODY_CHARS].strip()
        suffix = f": {detail}" if detail else ""
        raise ToolError(f"the {name} service answered HTTP {response.status_code}{suffix}")
    content_type = response.headers.get("content-type", "")
    if "json" in content_type.split(";")[0]:
        try:
            return response.json()
        except ValueError:
            return text
    return text
