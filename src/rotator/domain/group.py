"""Coordinated groups: members rotated together, in dependency order. Pure."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta

from rotator.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class GroupMember:
    name: str
    after: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Group:
    """Members rotate in dependency order (``after``), waiting ``min_offset`` between levels.

    With ``all_or_nothing`` every member is set and tested before any is finished; a failure
    rolls back the members already set, and the stage moves of all members commit in one
    transaction.
    """

    name: str
    members: tuple[GroupMember, ...]
    all_or_nothing: bool = False
    min_offset: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if len(names) < 2:
            raise InvalidInput(f"group {self.name!r} needs at least two members")
        if len(set(names)) != len(names):
            raise InvalidInput(f"group {self.name!r} lists a member twice")
        for m in self.members:
            for dep in m.after:
                if dep not in names:
                    raise InvalidInput(f"group {self.name!r}: {dep!r} is not a member")
                if dep == m.name:
                    raise InvalidInput(f"group {self.name!r}: {dep!r} cannot follow itself")
        self.levels()  # raises on a cycle

    def levels(self) -> list[list[str]]:
        """Members grouped into levels: each level only depends on earlier levels."""
        remaining = {m.name: set(m.after) for m in self.members}
        order = [m.name for m in self.members]
        done: set[str] = set()
        out: list[list[str]] = []
        while remaining:
            level = [n for n in order if n in remaining and remaining[n] <= done]
            if not level:
                raise InvalidInput(
                    f"group {self.name!r}: the order has a cycle among {sorted(remaining)}"
                )
            out.append(level)
            done.update(level)
            for n in level:
                del remaining[n]
        return out


def parse_order(members: list[str], deps: list[str]) -> tuple[GroupMember, ...]:
    """Members with their dependencies. ``deps`` items are ``A:B`` (A before B); with none, the
    members form a chain in the order given."""
    after: dict[str, list[str]] = {m: [] for m in members}
    if not deps:
        for prev, nxt in itertools.pairwise(members):
            after[nxt].append(prev)
    for d in deps:
        first, sep, then = d.partition(":")
        if not sep or not first or not then:
            raise InvalidInput(f"malformed --order {d!r}: expected FIRST:THEN")
        if then not in after:
            raise InvalidInput(f"--order {d!r}: {then!r} is not a member")
        after[then].append(first)
    return tuple(GroupMember(m, tuple(after[m])) for m in members)
