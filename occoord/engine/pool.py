"""The OpenCode servers the engine places attempts on (issue 13).

Each server is a member with a name (what task records keep), a client, a capacity (busy sessions
at once; None: only --max-sessions limits it) and labels (a task's ``server: LABEL`` picks among
the members that carry it). An attempt is placed on the least-loaded healthy member with room;
every later call about it goes to that member, after a restart too (the name is in the record).
With one server and no options, the pool has one member, ``default``, and placement is trivial.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from occoord.engine.ports import OpenCodePort
from occoord.errors import ServerUnavailable

__all__ = ["DEFAULT", "Member", "ServerPool"]

DEFAULT = "default"


@dataclass
class Member:
    name: str
    client: OpenCodePort
    capacity: int | None = None
    labels: frozenset[str] = frozenset()
    url: str = ""
    version: str = ""
    healthy: bool = True  # its event stream is connected (the service keeps this up to date)
    draining: bool = False  # no new sessions (being removed, or recycled once its sessions end)
    sessions: int = field(default=0)  # sessions placed on it since it joined (for recycling)


class ServerPool:
    def __init__(self, members: list[Member]) -> None:
        self._members: dict[str, Member] = {m.name: m for m in members}

    @classmethod
    def single(cls, client: OpenCodePort) -> ServerPool:
        url = getattr(client, "url", "")
        return cls([Member(DEFAULT, client, url=url if isinstance(url, str) else "")])

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def __len__(self) -> int:
        return len(self._members)

    @property
    def default(self) -> str:
        """The member an attempt recorded before pools existed belongs to: the first."""
        return next(iter(self._members), DEFAULT)

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def add(self, member: Member) -> None:
        self._members[member.name] = member

    def remove(self, name: str) -> Member | None:
        return self._members.pop(name, None)

    def client(self, name: str) -> OpenCodePort:
        member = self._members.get(name)
        if member is None:
            # Not sent: nothing reached any server; the caller retries (the server may come back).
            raise ServerUnavailable(name, "no such server in the pool (removed?)", sent=False)
        return member.client

    def place(self, label: str | None, busy: Callable[[str], int]) -> Member | None:
        """The least-loaded healthy member with room that carries ``label``; None if none has."""
        best: Member | None = None
        for member in self._members.values():
            if not member.healthy or member.draining:
                continue
            if label is not None and label not in member.labels and label != member.name:
                continue
            load = busy(member.name)
            if member.capacity is not None and load >= member.capacity:
                continue
            if best is None or load < busy(best.name):
                best = member
        return best

    def why_not(self, label: str | None) -> str:
        """Why ``place`` found no server, for ``occoord status``."""
        if label is not None and not any(
            label in m.labels or label == m.name for m in self._members.values()
        ):
            return f"waiting: no server is labelled {label} (add one: --server or SPOOL/servers/)"
        labelled = f" labelled {label}" if label else ""
        return f"waiting: no healthy server{labelled} with room"

    def describe(self) -> list[dict[str, object]]:
        """What ``occoord status`` shows of each server (never a password; how busy each is, the
        task records say: a pending task's ``details.server``)."""
        return [
            {
                "name": m.name,
                "url": m.url,
                "version": m.version,
                "healthy": m.healthy,
                "draining": m.draining,
                "capacity": m.capacity,
                "labels": sorted(m.labels),
            }
            for m in self._members.values()
        ]
