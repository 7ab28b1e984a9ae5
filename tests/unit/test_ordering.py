"""The batch order derived from references between credentials (engine/ordering.py)."""

from __future__ import annotations

import random

from rotator.engine.ordering import order


def test_referenced_credential_rotates_in_a_level_before_its_dependants() -> None:
    refs = {f"role{i}": ["pg/su"] for i in range(20)}
    plan = order([*refs, "pg/su"], refs)
    assert plan.levels == [["pg/su"], [f"role{i}" for i in range(20)]]
    assert plan.refused == {}
    assert plan.after["role3"] == ["pg/su"]
    assert plan.after["pg/su"] == []


def test_unrelated_credentials_share_the_first_level_in_the_given_order() -> None:
    plan = order(["c", "a", "b"], {})
    assert plan.levels == [["c", "a", "b"]]


def test_a_chain_gives_one_level_per_link() -> None:
    # leaf signed by an intermediate CA signed by a root CA; an API token whose auth is the leaf
    refs = {"leaf": ["inter"], "inter": ["root"], "api": ["leaf"]}
    plan = order(["api", "leaf", "inter", "root"], refs)
    assert plan.levels == [["root"], ["inter"], ["leaf"], ["api"]]
    assert plan.level_of() == {"root": 1, "inter": 2, "leaf": 3, "api": 4}


def test_a_member_waits_for_its_deepest_reference() -> None:
    refs = {"x": ["root", "inter"], "inter": ["root"]}
    assert order(["x", "inter", "root"], refs).levels == [["root"], ["inter"], ["x"]]


def test_reference_to_a_credential_outside_the_batch_imposes_no_order() -> None:
    plan = order(["role1", "role2"], {"role1": ["pg/su"], "role2": ["pg/su"]})
    assert plan.levels == [["role1", "role2"]]
    assert plan.after == {"role1": [], "role2": []}


def test_a_credential_that_is_its_own_admin_is_not_a_cycle() -> None:
    plan = order(["pg/su", "role"], {"pg/su": ["pg/su"], "role": ["pg/su"]})
    assert plan.refused == {}
    assert plan.levels == [["pg/su"], ["role"]]


def test_members_of_a_cycle_are_refused_naming_it_and_the_rest_still_ordered() -> None:
    refs = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"], "e": [], "f": ["e"]}
    plan = order(["d", "a", "b", "c", "e", "f"], refs)
    assert set(plan.refused) == {"a", "b", "c"}
    assert plan.refused["b"] == plan.refused["a"]
    assert "reference cycle ('a' -> 'b' -> 'c' -> 'a')" in plan.refused["a"]
    # d references only a refused member: nothing to wait for
    assert plan.levels == [["d", "e"], ["f"]]


def test_two_member_cycle_with_labels() -> None:
    plan = order([1, 2, 3], {1: [2], 2: [1]}, label={1: "x/one", 2: "x/two"})
    assert plan.refused[1] == (
        "in a reference cycle ('x/one' -> 'x/two' -> 'x/one'): rotate these one at a time"
    )
    assert plan.levels == [[3]]


def test_duplicate_members_are_ordered_once() -> None:
    assert order(["a", "b", "a"], {"b": ["a"]}).levels == [["a"], ["b"]]


def test_every_reference_inside_the_batch_points_to_an_earlier_level() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 30)
        nodes = [f"n{i}" for i in range(n)]
        refs = {k: rng.sample(nodes, rng.randint(0, min(3, n))) for k in nodes}
        plan = order(nodes, refs)
        level = plan.level_of()
        assert set(level) | set(plan.refused) == set(nodes)
        assert not set(level) & set(plan.refused)
        for k, lv in level.items():
            for r in refs[k]:
                if r != k and r in level:
                    assert level[r] < lv, (k, r)
        # refused members really are on a cycle: each reaches itself
        for k in plan.refused:
            seen, todo = set(), [r for r in refs[k] if r != k]
            while todo:
                x = todo.pop()
                if x not in seen:
                    seen.add(x)
                    todo.extend(r for r in refs[x] if r != x)
            assert k in seen


def test_order_is_deterministic() -> None:
    refs = {"a": ["b"], "b": ["a"], "c": ["d"]}
    assert order(["a", "b", "c", "d"], refs) == order(["a", "b", "c", "d"], refs)
