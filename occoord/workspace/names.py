"""Names derived from (run id, task id, attempt): the attempt's branch and its worktree's path.

Deriving them, rather than recording them first, is what makes worktree creation crash-safe: a
restarted watcher computes the same names and finds what a crash left behind.

Branch: ``occoord/<run>/<task>`` for attempt 1, ``occoord/<run>/<task>-<n>`` for attempt n >= 2.
Ids are ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``; some of those are not valid ref components (``a..b``,
``x.lock``, ``x.``), and ``x-2`` (attempt 1) would be the same name as ``x``'s attempt 2. So each
id is escaped with two characters no id holds, reversibly:

* in a run of dots, every dot after the first becomes ``+`` (``a...b`` -> ``a.++b``);
* an id that ends in ``.``, ``.lock`` or ``-<digits>`` gets a final ``=`` (``x.lock`` -> ``x.lock=``,
  ``x-2`` -> ``x-2=``: a component that ends in ``-<digits>`` is always an attempt suffix).

Decoding drops the final ``=`` and turns ``+`` back into ``.``. An escaped id is at most one
character longer than the id. Plain ids (``build``, ``T-1.x``) are their own escape.

Worktree path: ``<root>/<run>/<task>-<attempt>``, the ids as they are (any id is a file name), the
attempt always written, so the last ``-<digits>`` is the attempt. The default root is
``$XDG_DATA_HOME/occoord/worktrees`` (``~/.local/share/occoord/worktrees`` without it): outside the
spool, which a watcher watches.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from occoord.errors import ConfigError

__all__ = [
    "BRANCH_PREFIX",
    "BranchName",
    "branch_name",
    "decode_component",
    "default_root",
    "encode_component",
    "parse_branch",
    "parse_worktree_name",
    "run_branch_prefix",
    "run_worktrees",
    "worktree_path",
]

BRANCH_PREFIX = "occoord"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DOT_RUN = re.compile(r"\.(\.+)")
_ATTEMPT = re.compile(r"(.+)-([1-9][0-9]*)")
_ENCODED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*=?")


def _check_id(kind: str, value: str) -> None:
    if not _ID.fullmatch(value):
        raise ValueError(f"invalid {kind} id {value!r}")


def _check_attempt(attempt: int) -> None:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"invalid attempt {attempt!r}: a number from 1")


def encode_component(text: str) -> str:
    """``text`` (an id) as a valid ref component that never ends in ``-<digits>``."""
    _check_id("run or task", text)
    out = _DOT_RUN.sub(lambda m: "." + "+" * len(m.group(1)), text)
    if out.endswith((".", ".lock")) or re.search(r"-[0-9]+\Z", out):
        out += "="
    return out


def decode_component(component: str) -> str | None:
    """The id that :func:`encode_component` made ``component`` from; None if it made no such one."""
    if not _ENCODED.fullmatch(component):
        return None
    text = component.removesuffix("=").replace("+", ".")
    return text if _ID.fullmatch(text) and encode_component(text) == component else None


def run_branch_prefix(run_id: str) -> str:
    """``occoord/<run>/``: every branch of the run's attempts starts with it."""
    return f"{BRANCH_PREFIX}/{encode_component(run_id)}/"


def branch_name(run_id: str, task_id: str, attempt: int) -> str:
    """The branch (short name, without ``refs/heads/``) of a task's attempt."""
    _check_attempt(attempt)
    task = encode_component(task_id)
    return run_branch_prefix(run_id) + (task if attempt == 1 else f"{task}-{attempt}")


@dataclass(frozen=True)
class BranchName:
    run_id: str
    task_id: str
    attempt: int


def parse_branch(name: str) -> BranchName | None:
    """The attempt a branch name (short, or with ``refs/heads/``) belongs to; None if it is not
    one :func:`branch_name` makes."""
    parts = name.removeprefix("refs/heads/").split("/")
    if len(parts) != 3 or parts[0] != BRANCH_PREFIX:
        return None
    run_id = decode_component(parts[1])
    tail = parts[2]
    attempt = 1
    if m := _ATTEMPT.fullmatch(tail):
        tail, attempt = m.group(1), int(m.group(2))
        if attempt == 1:
            return None
    task_id = decode_component(tail)
    if (
        run_id is None
        or task_id is None
        or branch_name(run_id, task_id, attempt) != name.removeprefix("refs/heads/")
    ):
        return None
    return BranchName(run_id, task_id, attempt)


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where worktrees go by default: ``$XDG_DATA_HOME/occoord/worktrees`` if that is absolute (the
    XDG rule: a relative one is ignored), else ``~/.local/share/occoord/worktrees``."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "occoord" / "worktrees"
    home = env.get("HOME") or ""
    if not home:
        try:
            home = str(Path.home())
        except RuntimeError as exc:  # no HOME and no passwd entry
            raise ConfigError("XDG_DATA_HOME", "not set, and this user has no home directory") from exc
    return Path(home) / ".local" / "share" / "occoord" / "worktrees"


def worktree_path(root: Path, run_id: str, task_id: str, attempt: int) -> Path:
    """``<root>/<run>/<task>-<attempt>``: where the attempt's worktree lives."""
    _check_id("run", run_id)
    _check_id("task", task_id)
    _check_attempt(attempt)
    return root / run_id / f"{task_id}-{attempt}"


def run_worktrees(root: Path, run_id: str) -> Path:
    """``<root>/<run>``: the folder of one run's worktrees."""
    _check_id("run", run_id)
    return root / run_id


def parse_worktree_name(name: str) -> tuple[str, int] | None:
    """(task id, attempt) of a worktree folder's name ``<task>-<attempt>``, or None."""
    m = _ATTEMPT.fullmatch(name)
    if m is None or not _ID.fullmatch(m.group(1)):
        return None
    return m.group(1), int(m.group(2))
