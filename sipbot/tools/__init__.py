"""Provider-agnostic tools: typed Python functions, HTTP endpoints and built-in telephony actions.

``@tool`` turns a typed function into a :class:`Tool` whose JSON schema both providers read;
:class:`ToolRunner` runs a call's tool calls beside its audio; :class:`ToolContext` is what a tool
sees of the call, and :class:`CallControl` what it may do to it.
"""

from sipbot.tools.builtin import (
    BUILTIN_NAMES,
    TransferCallTool,
    TransferPolicy,
    builtin_tool,
    get_caller_info,
    hang_up,
    send_dtmf,
    transfer_call,
)
from sipbot.tools.context import CallControl, ToolContext
from sipbot.tools.http import HttpTool, aclose_http_clients
from sipbot.tools.registry import PythonTool, Tool, load_python_tool, tool
from sipbot.tools.runner import ToolResult, ToolRunner

__all__ = [
    "BUILTIN_NAMES",
    "CallControl",
    "HttpTool",
    "PythonTool",
    "Tool",
    "ToolContext",
    "ToolResult",
    "ToolRunner",
    "TransferCallTool",
    "TransferPolicy",
    "aclose_http_clients",
    "builtin_tool",
    "get_caller_info",
    "hang_up",
    "load_python_tool",
    "send_dtmf",
    "tool",
    "transfer_call",
]
