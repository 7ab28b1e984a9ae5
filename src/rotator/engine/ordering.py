"""Batch order from references between credentials (pure: no I/O, no clock).

A credential *references* another when one of its connector settings names it (a PostgreSQL
role's ``admin``, an HTTP API's ``auth`` token, a leaf certificate's ``ca``; connectors declare
which settings do, see ``connectors.base.references_of``). No credential may rotate while one
it references is being rotated: its own steps log in with, or sign with, that value.

The order is by levels, **referenced credentials first**: level 1 holds every member that
references no other member, level N+1 those whose references are all in levels 1..N. A
dependant therefore starts only after what it references has finished, and reads the new
value (the engine drops its cached copy at finish). This order, rather than dependants
first, is what an emergency needs: a leaf re-issued before its CA rotates would be signed by
the CA that is being replaced (and, with grace 0, distrusted at once).

Rules callers rely on:

- Only references between members of the batch impose an order; a reference to a credential
  outside the batch is ignored here (the engine waits for such a credential's lock instead).
- A reference of a credential to itself (an admin password rotating itself) is ignored.
- Members of a reference cycle (A references B, B references A, possibly through others) are
  **refused**, not rotated: no order is safe for them. Each gets a one-line reason naming the
  cycle; the other members are ordered as if the refused ones were not in the batch.
- Within a level, members keep the order they were given in; levels are deterministic.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class BatchOrder(Generic[K]):
    """``levels``: members to rotate, level by level (each level fully concurrent).
    ``refused``: members not to rotate, with the reason. ``after``: for each ordered member,
    the members it references (they rotate in earlier levels)."""

    levels: list[list[K]] = field(default_factory=list)
    refused: dict[K, str] = field(default_factory=dict)
    after: dict[K, list[K]] = field(default_factory=dict)

    def level_of(self) -> dict[K, int]:
        """Member -> its level number, starting at 1."""
        return {k: i for i, level in enumerate(self.levels, 1) for k in level}


def order(
    members: Sequence[K],
    references: Mapping[K, Iterable[K]],
    label: Mapping[K, str] | None = None,
) -> BatchOrder[K]:
    """Order ``members`` (duplicates are kept once) by ``references`` (member -> what it
    references). ``label`` names members in refusal messages (default ``str``)."""
    names = label or {}
    uniq = list(dict.fromkeys(members))
    position = {k: i for i, k in enumerate(uniq)}
    refs: dict[K, list[K]] = {
        k: sorted(
            {r for r in references.get(k, ()) if r in position and r != k},
            key=position.__getitem__,
        )
        for k in uniq
    }
    refused: dict[K, str] = {}
    for component in _cycles(uniq, refs):
        path = " -> ".join(repr(names.get(k, str(k))) for k in _cycle_path(component, refs))
        for k in component:
            refused[k] = f"in a reference cycle ({path}): rotate these one at a time"
    live = [k for k in uniq if k not in refused]
    remaining = {k: [r for r in refs[k] if r not in refused] for k in live}
    levels: list[list[K]] = []
    done: set[K] = set()
    while remaining:
        level = [k for k in live if k in remaining and all(r in done for r in remaining[k])]
        assert level, "cycles were removed above"
        levels.append(level)
        done.update(level)
        for k in level:
            del remaining[k]
    after = {k: [r for r in refs[k] if r not in refused] for k in live}
    return BatchOrder(levels=levels, refused=refused, after=after)


def _cycles(nodes: list[K], refs: Mapping[K, list[K]]) -> list[list[K]]:
    """Strongly connected components with more than one member (Tarjan, iterative), each in
    input order, listed in the order of their first member."""
    index: dict[K, int] = {}
    low: dict[K, int] = {}
    stack: list[K] = []
    on_stack: set[K] = set()
    found: list[list[K]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[K, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = refs[node]
            if i < len(children):
                work.append((node, i + 1))
                child = children[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component: list[K] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    pos = {k: i for i, k in enumerate(nodes)}
    comps = [sorted(c, key=pos.__getitem__) for c in found]
    return sorted(comps, key=lambda c: pos[c[0]])


def _cycle_path(component: list[K], refs: Mapping[K, list[K]]) -> list[K]:
    """One cycle through the component's first member, closed (first == last): the shortest
    by breadth-first search, ties broken by reference order."""
    start = component[0]
    inside = set(component)
    prev: dict[K, K] = {}
    frontier = [start]
    while frontier:
        nxt: list[K] = []
        for node in frontier:
            for r in refs[node]:
                if r not in inside:
                    continue
                if r == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if r not in prev:
                    prev[r] = node
                    nxt.append(r)
        frontier = nxt
    return [*component, start]  # pragma: no cover - a component always closes a cycle


__all__ = ["BatchOrder", "order"]
