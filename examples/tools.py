"""Example tools, referenced from a dialplan as ``python: "examples.tools:lookup_order"``.

Copy this file next to your dialplan (say ``mytools.py``) and reference ``mytools:lookup_order``:
the loader finds modules in the dialplan's directory and in the working directory.

A tool is a typed function with a docstring. Its parameters (described under ``Args:``) become
the JSON schema the model fills in; a parameter annotated ``ToolContext`` receives the call
(caller, DID, headers, transcript so far, call control) and is hidden from the model. Raise
``ToolError`` for a failure the model should explain to the caller; any other exception is
logged and the model only hears that the tool failed.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from sipbot.errors import ToolError
from sipbot.tools import ToolContext, tool

_ORDERS = {
    "A1001": {"status": "shipped", "carrier": "DHL", "eta": "tomorrow"},
    "A1002": {"status": "being packed", "carrier": "", "eta": "in three days"},
}


@tool
async def lookup_order(order_id: str, context: ToolContext) -> dict[str, str]:
    """Look up the status and delivery date of a customer's order.

    Args:
        order_id: the order number as the caller reads it out, e.g. A1001.
    """
    await asyncio.sleep(0.05)  # stands for a database or API call
    order = _ORDERS.get(order_id.replace(" ", "").upper())
    if order is None:
        raise ToolError(f"there is no order {order_id}")
    return {"order_id": order_id.upper(), **order, "caller": context.caller}


@tool
def schedule_callback(
    when: Literal["morning", "afternoon", "evening"], topic: str, context: ToolContext
) -> str:
    """Book a call back to the caller's number on the next business day.

    A plain (sync) function runs in a worker thread, so a blocking client is fine here.

    Args:
        when: the part of the day the caller prefers.
        topic: what the caller wants to talk about, in a few words.
    """
    return f"A callback to {context.caller} about {topic!r} is booked for tomorrow {when}."
