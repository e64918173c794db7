"""The OpenCode wing: HTTP client, event stream, turn outcomes, permission policy, the server
process and a simulator. It knows nothing of the spool; the coordinator drives it.

Names are exported lazily so that importing ``occoord`` (e.g. for ``occoord validate``) does not
import httpx or aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from occoord.opencode.client import OpenCodeClient
    from occoord.opencode.events import EventStream
    from occoord.opencode.models import Health, Message, ModelRef, Session
    from occoord.opencode.outcome import TurnOutcome, classify
    from occoord.opencode.permissions import PermissionPolicy, PolicyResponder
    from occoord.opencode.server import OpenCodeServer
    from occoord.opencode.simulator import Simulator

__all__ = [
    "EventStream",
    "Health",
    "Message",
    "ModelRef",
    "OpenCodeClient",
    "OpenCodeServer",
    "PermissionPolicy",
    "PolicyResponder",
    "Session",
    "Simulator",
    "TurnOutcome",
    "classify",
]

_HOMES = {
    "OpenCodeClient": "client",
    "EventStream": "events",
    "Health": "models",
    "Message": "models",
    "ModelRef": "models",
    "Session": "models",
    "TurnOutcome": "outcome",
    "classify": "outcome",
    "PermissionPolicy": "permissions",
    "PolicyResponder": "permissions",
    "OpenCodeServer": "server",
    "Simulator": "simulator",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'occoord.opencode' has no attribute {name!r}")
    return getattr(importlib.import_module(f"occoord.opencode.{home}"), name)
