"""The exception tree. Every error occoord raises on purpose derives from :class:`OccoordError`.

Foreign exceptions (OSError, httpx, yaml, ...) are mapped into this tree once, at the boundary
where they happen, with ``raise X(...) from exc``. Each exception keeps its data as attributes and
builds its one-line message in ``__str__`` so the CLI can print it as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ApiError",
    "ConfigError",
    "GitError",
    "IllegalTransition",
    "Locked",
    "ManifestError",
    "ManifestProblem",
    "NotFound",
    "OccoordError",
    "RequestRejected",
    "ServerUnavailable",
    "SessionBusy",
    "SpoolError",
    "TransitionConflict",
]


class OccoordError(Exception):
    """Root of every error occoord raises on purpose."""


@dataclass(frozen=True)
class ManifestProblem:
    """One thing wrong with a manifest: where (a field path such as ``tasks[2].depends_on``) and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class ManifestError(OccoordError):
    """A manifest failed to parse or validate. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: Sequence[ManifestProblem]) -> None:
        super().__init__(source, tuple(problems))
        self.source = source
        self.problems = tuple(problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        lines = [f"{self.source}: {len(self.problems)} problems"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class SpoolError(OccoordError):
    """The spool directory is missing, unusable or inconsistent."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class NotFound(SpoolError):
    """A run or task named by the user does not exist in the spool."""


class Locked(SpoolError):
    """A spool or run lock that another process (a script's ``flock``) holds for longer than the
    caller may wait; try again later."""

    def __init__(self, path: str, waited: float) -> None:
        super().__init__(path, f"locked by another process (waited {waited:g} s)")
        self.waited = waited


class IllegalTransition(OccoordError):
    """A state change the transition table does not allow (e.g. ``done -> pending``)."""

    def __init__(self, task: str, source: str, target: str, reason: str = "") -> None:
        super().__init__(task, source, target, reason)
        self.task = task
        self.source = source
        self.target = target
        self.reason = reason

    def __str__(self) -> str:
        tail = f": {self.reason}" if self.reason else ""
        return f"task {self.task}: illegal transition {self.source} -> {self.target}{tail}"


class TransitionConflict(OccoordError):
    """The task was not in the expected state when we tried to move it: someone else won the race."""

    def __init__(self, task: str, expected: str, actual: str | None) -> None:
        super().__init__(task, expected, actual)
        self.task = task
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return f"task {self.task}: expected state {self.expected}, found {self.actual or 'no state file'}"


class ConfigError(OccoordError):
    """A command-line option, environment variable or configuration value is wrong."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


class ServerUnavailable(OccoordError):
    """The OpenCode server cannot be reached, did not start, or stopped answering."""

    def __init__(self, url: str, reason: str, status: int | None = None, *, sent: bool | None = None) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason
        self.status = status  # the 5xx it kept answering; None when it could not be reached at all
        # False: the request certainly never reached the server (no connection was made). Otherwise
        # it may have been acted on although no answer came back (a read timeout, a reset).
        self.sent = sent

    @property
    def unreachable(self) -> bool:
        return self.status is None

    @property
    def maybe_delivered(self) -> bool:
        """No answer came, but the request may have been acted on (a read timeout, a reset)."""
        return self.status is None and self.sent is not False

    def __str__(self) -> str:
        return f"OpenCode server {self.url}: {self.reason}"


class ApiError(OccoordError):
    """The OpenCode server answered a request with an error status."""

    def __init__(self, method: str, path: str, status: int, name: str, message: str) -> None:
        super().__init__(method, path, status, name, message)
        self.method = method
        self.path = path
        self.status = status
        self.name = name
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    def __str__(self) -> str:
        what = f"{self.name}: {self.message}" if self.name else self.message
        return f"{self.method} {self.path} -> {self.status} {what}".rstrip()


class RequestRejected(OccoordError):
    """A request that cannot be sent as it stands (a value no URL or JSON body can carry); no
    retry can fix it."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(what, reason)
        self.what = what
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}"


class SessionBusy(OccoordError):
    """A session is still busy after it was told to stop."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        return f"session {self.session_id} is still busy after an abort"


class GitError(OccoordError):
    """A git command failed, or a repository or worktree is not in the state an operation needs.

    ``where`` is the repository or worktree it is about; ``command`` the git argv, if one ran.
    """

    def __init__(self, where: str, reason: str, *, command: Sequence[str] = ()) -> None:
        super().__init__(where, reason)
        self.where = where
        self.reason = reason
        self.command = tuple(command)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"
