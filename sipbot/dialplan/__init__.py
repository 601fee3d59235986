"""Dialplans: which agent (or which SIP answer) each incoming call gets.

The same frozen objects come out of a YAML file (:func:`sipbot.config.load_config`) and can be
built in Python code::

    support = Agent("support", provider="gemini", prompt="You help {caller}.", tools=["hang_up"])
    dialplan = Dialplan([
        Route("sales", Answer(support), Match(did="100")),
        Route("default", Reject(404)),
    ])
    decision = route(dialplan, RouteRequest("100", "555", "", "192.0.2.1", {}, now))
"""

from sipbot.dialplan.agent import CODECS, PROVIDERS, Agent
from sipbot.dialplan.amd import AmdSettings
from sipbot.dialplan.analysis import dialplan_warnings
from sipbot.dialplan.match import Exact, Match, Prefix, Regex, TimeRange
from sipbot.dialplan.model import (
    Action,
    Answer,
    Dialplan,
    DtmfAction,
    HangUp,
    Reject,
    Route,
    RouteDecision,
    RouteRequest,
    Transfer,
    route,
)
from sipbot.dialplan.template import Template

__all__ = [
    "CODECS",
    "PROVIDERS",
    "Action",
    "Agent",
    "AmdSettings",
    "Answer",
    "Dialplan",
    "DtmfAction",
    "Exact",
    "HangUp",
    "Match",
    "Prefix",
    "Regex",
    "Reject",
    "Route",
    "RouteDecision",
    "RouteRequest",
    "Template",
    "TimeRange",
    "Transfer",
    "dialplan_warnings",
    "route",
]
