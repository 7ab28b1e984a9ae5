"""Coordinated groups: dependency order, offsets, all-or-nothing, on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from tests.support import doubles
from tests.support.doubles import DoubleConfig

from rotator.domain.group import Group, GroupMember, parse_order
from rotator.domain.model import Stage
from rotator.engine import BatchResult, Engine, EngineOptions
from rotator.errors import InvalidInput, NotFound
from rotator.service import BlockingService, PolicyInput, ValueInput

FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01)


@pytest.fixture(autouse=True)
def _double() -> Iterator[None]:
    doubles.install()
    yield
    doubles.MemoryTarget.valid.clear()


def add(svc: BlockingService, name: str, **settings: Any) -> str:
    svc.add_credential(
        name,
        "double",
        settings={k: str(v) for k, v in settings.items()},
        policy=PolicyInput(grace="1h"),
        value=ValueInput(generate=True),
    )
    value = svc.get_value(name).reveal_text()
    doubles.target_add(DoubleConfig(**settings), name, value)
    return value


def rotate_group(svc: BlockingService, group: Group) -> BatchResult:
    async def go() -> BatchResult:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate_group(group)

    return asyncio.run(go())


def ts(svc: BlockingService, action: str, name: str) -> datetime:
    [entry] = [e for e in svc.audit_entries(credential=name) if e.action == action]
    return datetime.fromisoformat(entry.ts.replace("Z", "+00:00"))


def test_members_rotate_in_dependency_order_with_offset(svc: BlockingService) -> None:
    for n in ("db", "app", "worker"):
        add(svc, n)
    group = Group(
        "stack", parse_order(["db", "app", "worker"], []), min_offset=timedelta(milliseconds=300)
    )
    svc.add_group(group)
    assert svc.get_group("stack").levels() == [["db"], ["app"], ["worker"]]
    result = rotate_group(svc, svc.get_group("stack"))
    assert result.to_json()["rotated"] == ["db", "app", "worker"]
    gap1 = ts(svc, "rotation.create", "app") - ts(svc, "rotation.complete", "db")
    gap2 = ts(svc, "rotation.create", "worker") - ts(svc, "rotation.complete", "app")
    assert gap1 >= timedelta(milliseconds=300)
    assert gap2 >= timedelta(milliseconds=300)


def test_failure_stops_dependents_but_keeps_earlier_members(svc: BlockingService) -> None:
    add(svc, "a")
    old_b = add(svc, "b", fail_test=True)
    old_c = add(svc, "c")
    group = Group("g", parse_order(["a", "b", "c"], []))
    data = rotate_group(svc, group).to_json()
    assert data["rotated"] == ["a"]
    assert data["rolled_back"] == ["b"]
    errors = {f["name"]: f["error"] for f in data["failed"]}
    assert errors["c"] == "not rotated: 'b' before it failed"
    assert svc.get_value("b").reveal_text() == old_b
    assert svc.get_value("c").reveal_text() == old_c
    assert len(svc.show("a").versions) == 2


def test_all_or_nothing_failure_rolls_back_every_member(svc: BlockingService) -> None:
    old = {"a": add(svc, "a"), "b": add(svc, "b"), "c": add(svc, "c", fail_test=True)}
    group = Group("g", parse_order(["a", "b", "c"], []), all_or_nothing=True)
    data = rotate_group(svc, group).to_json()
    assert data["rotated"] == []
    assert sorted(data["rolled_back"]) == ["a", "b", "c"]
    for name, value in old.items():
        assert svc.get_value(name).reveal_text() == value
        stages = {v.number: v.stage for v in svc.show(name).versions}
        assert stages == {1: Stage.CURRENT, 2: Stage.FAILED}
        settings = {"fail_test": True} if name == "c" else {}
        assert doubles.target_values(DoubleConfig(**settings), name) == {value}
    errors = {f["name"]: f["error"] for f in data["failed"]}
    assert "group 'g' rolled back: 'c' failed" in errors["a"]


def test_all_or_nothing_success_moves_every_member(svc: BlockingService) -> None:
    old = {n: add(svc, n) for n in ("a", "b", "c", "d")}
    members = parse_order(["a", "b", "c", "d"], ["a:c", "b:c", "c:d"])
    group = Group("g", members, all_or_nothing=True)
    assert group.levels() == [["a", "b"], ["c"], ["d"]]
    data = rotate_group(svc, group).to_json()
    assert sorted(data["rotated"]) == ["a", "b", "c", "d"]
    for name, value in old.items():
        assert svc.get_value(name).reveal_text() != value
        assert svc.get_value(name, Stage.PREVIOUS).reveal_text() == value
    # No member finished before every member was tested.
    last_test = max(ts(svc, "rotation.test", n) for n in old)
    first_complete = min(ts(svc, "rotation.complete", n) for n in old)
    assert first_complete >= last_test


@pytest.mark.parametrize(
    ("members", "order", "message"),
    [
        (["a"], [], "at least two members"),
        (["a", "a"], [], "twice"),
        (["a", "b"], ["a:b", "b:a"], "cycle"),
        (["a", "b"], ["x:b"], "not a member"),
        (["a", "b"], ["a-b"], "malformed --order"),
    ],
)
def test_invalid_groups_are_refused(members: list[str], order: list[str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Group("g", parse_order(members, order))


def test_group_members_must_exist_and_removal_is_guarded(svc: BlockingService) -> None:
    add(svc, "a")
    with pytest.raises(NotFound, match="'ghost'"):
        svc.add_group(Group("g", (GroupMember("a"), GroupMember("ghost", ("a",)))))
    add(svc, "b")
    svc.add_group(Group("g", parse_order(["a", "b"], [])))
    with pytest.raises(InvalidInput, match="member of group 'g'"):
        svc.remove_credential("a")
    svc.remove_group("g")
    svc.remove_credential("a")
    assert svc.list_groups() == []
