"""Permissions for unattended sessions.

An OpenCode session that hits a permission ask waits forever, still busy, until someone replies - and
with a headless coordinator nobody will. Two layers prevent that: per-session rules given at creation
(:func:`session_rules`) allow what a task normally needs, including the spool directory the agent
signals through; and :class:`PolicyResponder` answers whatever ask slips through anyway, so no ask
is ever left waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from occoord.errors import OccoordError

from .client import OpenCodeClient
from .events import PermissionAsked, QuestionAsked

__all__ = ["DEFAULT_ALLOW", "PermissionPolicy", "PolicyResponder", "session_rules"]

log = logging.getLogger(__name__)

DEFAULT_ALLOW: tuple[str, ...] = (
    "bash",
    "edit",
    "read",
    "glob",
    "grep",
    "list",
    "external_directory",
    "webfetch",
    "todowrite",
    "task",
    "skill",
)

_REPLIES = ("once", "always", "reject")


def _rule(permission: str, pattern: str, action: str) -> dict[str, str]:
    return {"permission": permission, "pattern": pattern, "action": action}


def session_rules(
    extra_paths: Sequence[str] = (), *, allow: Sequence[str] = DEFAULT_ALLOW
) -> list[dict[str, str]]:
    """Rules for ``POST /session`` (``permission``): allow the listed tools everywhere, allow the
    extra paths as external directories, and deny the ``question`` tool.

    The extra paths matter even when ``external_directory`` is not in ``allow``: the agent signals
    completion by renaming a file in the spool, which usually lies outside the task's directory. The
    question deny comes last because OpenCode lets the last matching rule win.
    """
    rules = [_rule(permission, "*", "allow") for permission in allow]
    for path in extra_paths:
        base = path.rstrip("/") or "/"
        rules.append(_rule("external_directory", base, "allow"))
        rules.append(_rule("external_directory", "/*" if base == "/" else f"{base}/*", "allow"))
    rules.append(_rule("question", "*", "deny"))
    return rules


@dataclass(frozen=True)
class PermissionPolicy:
    """How to answer asks: ``default`` reply for every permission, except those named in ``reject``."""

    default: str = "once"
    reject: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.default not in _REPLIES:
            raise ValueError(f"permission reply must be one of {', '.join(_REPLIES)}, not {self.default!r}")

    def reply_for(self, permission: str) -> str:
        return "reject" if permission in self.reject else self.default


class PolicyResponder:
    """Answers permission and question asks from the event stream according to a policy.

    Every answer is logged at WARNING: an ask means the session rules did not cover what an agent
    did, which an operator should see. Failures to reply are logged, never raised, so one odd ask
    cannot stop the event pump that feeds the coordinator.
    """

    REJECT_MESSAGE = "denied by occoord's permission policy (unattended run)"

    def __init__(self, client: OpenCodeClient, policy: PermissionPolicy | None = None) -> None:
        self._client = client
        self.policy = policy if policy is not None else PermissionPolicy()

    async def handle(self, event: object) -> None:
        try:
            if isinstance(event, PermissionAsked):
                await self._permission(event)
            elif isinstance(event, QuestionAsked):
                await self._question(event)
        except OccoordError as exc:
            log.error("could not answer %s: %s", type(event).__name__, exc)

    async def _permission(self, event: PermissionAsked) -> None:
        reply = self.policy.reply_for(event.permission)
        log.warning(
            "session %s asked for %s %s; replying %r",
            event.session_id,
            event.permission,
            ", ".join(event.patterns) or "(no pattern)",
            reply,
        )
        message = self.REJECT_MESSAGE if reply == "reject" else None
        await self._client.reply_permission(event.request_id, event.directory, reply, message)

    async def _question(self, event: QuestionAsked) -> None:
        log.warning(
            "session %s asked a question (%s); rejecting: nobody is there to answer",
            event.session_id,
            " / ".join(event.questions) or "no text",
        )
        await self._client.reject_question(event.request_id, event.directory)
