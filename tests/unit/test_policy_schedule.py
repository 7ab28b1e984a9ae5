"""Pure policy tests: every kind of rule with ``now`` passed in (no clock, no store).

Times are UTC instants; Europe/Berlin changes to summer time on 2026-03-29 (02:00 CET ->
03:00 CEST) and back on 2026-10-25 (03:00 CEST -> 02:00 CET).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rotator.domain.policy import Blackout, RotationPolicy, parse_duration
from rotator.errors import PolicyError
from rotator.policy import next_rotation, resolve
from rotator.policy.defaults import own_partial
from rotator.policy.schedule import cron_after, jitter_offset
from rotator.service.inputs import PolicyInput

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def fires(policy: RotationPolicy, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = cron_after(policy, t)
        out.append(t)
    return out


# -- cron across DST ------------------------------------------------------------------------


def test_cron_keeps_its_local_wall_time_across_the_spring_change() -> None:
    p = RotationPolicy(cron="0 3 * * *", tz="Europe/Berlin")
    times = fires(p, utc(2026, 3, 27, 12), 4)
    assert times == [
        utc(2026, 3, 28, 2),
        utc(2026, 3, 29, 1),
        utc(2026, 3, 30, 1),
        utc(2026, 3, 31, 1),
    ]
    assert {t.astimezone(BERLIN).strftime("%H:%M") for t in times} == {"03:00"}


def test_cron_time_in_the_spring_gap_fires_once_right_after_the_jump() -> None:
    p = RotationPolicy(cron="30 2 * * *", tz="Europe/Berlin")
    times = fires(p, utc(2026, 3, 28, 12), 3)
    # 02:30 does not exist on the 29th: it fires at 03:00 CEST, then 02:30 again.
    assert times == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]


def test_cron_time_repeated_in_the_autumn_change_fires_once() -> None:
    p = RotationPolicy(cron="30 2 * * *", tz="Europe/Berlin")
    times = fires(p, utc(2026, 10, 24, 12), 3)
    # 02:30 happens twice on the 25th (CEST, then CET): one rotation, at the first.
    assert times == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]


def test_hourly_cron_runs_every_hour_through_the_autumn_change() -> None:
    p = RotationPolicy(cron="0 * * * *", tz="Europe/Berlin")
    times = fires(p, utc(2026, 10, 24, 23, 30), 4)
    assert times == [utc(2026, 10, 25, h) for h in range(0, 4)]


def test_weekly_cron_in_utc_when_no_zone_is_given() -> None:
    p = RotationPolicy(cron="0 3 * * 0")
    when, rule = next_rotation(p, now=utc(2026, 3, 27), last_rotated_at=utc(2026, 3, 27))
    assert when == utc(2026, 3, 29, 3)
    assert rule == "cron '0 3 * * 0'"


# -- windows ----------------------------------------------------------------------------------


def test_cron_window_still_open_is_due_at_its_cron_time() -> None:
    p = RotationPolicy(cron="0 3 * * *", window=timedelta(hours=2))
    when, rule = next_rotation(p, now=utc(2026, 5, 2, 4), last_rotated_at=utc(2026, 5, 1, 12))
    assert when == utc(2026, 5, 2, 3)
    assert rule == "cron '0 3 * * *' window 2h"


def test_cron_window_that_has_passed_gives_way_to_the_next_occurrence() -> None:
    p = RotationPolicy(cron="0 3 * * *", window=timedelta(hours=2))
    when, _ = next_rotation(p, now=utc(2026, 5, 2, 6), last_rotated_at=utc(2026, 5, 1, 12))
    assert when == utc(2026, 5, 3, 3)


def test_without_a_window_an_overdue_cron_time_stays_due() -> None:
    p = RotationPolicy(cron="0 3 * * *")
    when, _ = next_rotation(p, now=utc(2026, 5, 9), last_rotated_at=utc(2026, 5, 1, 12))
    assert when == utc(2026, 5, 2, 3)


# -- jitter -----------------------------------------------------------------------------------


@given(
    name=st.text(min_size=1, max_size=60),
    jitter_s=st.integers(min_value=1, max_value=30 * 86400),
)
def test_jitter_offset_is_always_in_range_and_stable_for_a_name(name: str, jitter_s: int) -> None:
    jitter = timedelta(seconds=jitter_s)
    off = jitter_offset(name, jitter)
    assert timedelta(0) <= off < jitter
    assert jitter_offset(name, jitter) == off


@given(name=st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,40}", fullmatch=True))
def test_jittered_interval_is_due_at_the_credentials_offset_within_one_interval(
    name: str,
) -> None:
    last = utc(2026, 1, 1)
    p = RotationPolicy(every=timedelta(days=30), jitter=timedelta(minutes=10))
    when, rule = next_rotation(p, now=last, last_rotated_at=last, seed=name)
    assert when is not None
    assert last < when <= last + timedelta(days=30)
    # On the credential's grid: a whole number of intervals plus its offset from a fixed start.
    phase = (when - utc(2000, 1, 1) - jitter_offset(name, timedelta(minutes=10))) % p.every
    assert phase == timedelta(0)
    assert rule == "every 30d + jitter 10m"
    assert next_rotation(p, now=last, last_rotated_at=last, seed=name)[0] == when


@given(
    name=st.text(min_size=1, max_size=30),
    every_s=st.integers(min_value=60, max_value=90 * 86400),
    jitter_s=st.integers(min_value=1, max_value=180 * 86400),
    start_s=st.integers(min_value=0, max_value=10 * 365 * 86400),
    delays=st.lists(st.integers(min_value=0, max_value=59), min_size=20, max_size=60),
)
def test_jittered_interval_rotated_when_due_keeps_the_interval_on_average(
    name: str, every_s: int, jitter_s: int, start_s: int, delays: list[int]
) -> None:
    # A credential rotated at each due time (a worker a few seconds late) keeps the period:
    # the offset is not added once per rotation.
    every, jitter = timedelta(seconds=every_s), timedelta(seconds=jitter_s)
    p = RotationPolicy(every=every, jitter=jitter)
    offset = jitter_offset(name, min(jitter, every))
    last = utc(2016, 1, 1) + timedelta(seconds=start_s)
    dues = []
    for delay in delays:
        due, _ = next_rotation(p, now=last, last_rotated_at=last, seed=name)
        assert due is not None
        if dues:  # the un-jittered time of the last rotation, plus every, plus at most jitter
            base = dues[-1] - offset + every
            assert base <= due < base + jitter
        dues.append(due)
        last = due + timedelta(seconds=delay)
    mean = (dues[-1] - dues[0]) / (len(dues) - 1)
    assert abs(mean - every) < timedelta(seconds=1)


def test_jitter_spreads_many_credentials_over_the_whole_span() -> None:
    jitter = timedelta(minutes=10)
    offs = [jitter_offset(f"prod/db-{i}", jitter) for i in range(1000)]
    assert len(set(offs)) > 990
    per_minute = [0] * 10
    for o in offs:
        per_minute[int(o.total_seconds() // 60)] += 1
    assert min(per_minute) > 50  # ~100 each; none of the ten minutes empty or crowded


def test_cron_jitter_with_a_window_stays_inside_the_window() -> None:
    p = RotationPolicy(cron="0 3 * * *", window=timedelta(minutes=5), jitter=timedelta(hours=1))
    for i in range(200):
        when, rule = next_rotation(
            p, now=utc(2026, 5, 1, 12), last_rotated_at=utc(2026, 5, 1, 12), seed=f"c{i}"
        )
        assert when is not None
        assert utc(2026, 5, 2, 3) <= when < utc(2026, 5, 2, 3, 5)
    assert rule == "cron '0 3 * * *' window 5m + jitter 1h"


# -- blackout ---------------------------------------------------------------------------------


def test_blackout_parses_and_prints_canonically() -> None:
    b = Blackout.parse("friday 18:00 - mon 6:00")
    assert str(b) == "Fri 18:00-Mon 06:00"
    assert b.contains(5 * 1440)  # Sat 00:00
    assert not b.contains(2 * 1440)  # Wed 00:00


@pytest.mark.parametrize(
    "text", ["Fri 18:00", "Fry 18:00-Mon 06:00", "Fri 24:00-Mon 06:00", "Fri 18:00-Fri 18:00", ""]
)
def test_malformed_blackout_is_a_policy_error_naming_the_option(text: str) -> None:
    with pytest.raises(PolicyError, match="--blackout"):
        Blackout.parse(text)


def test_due_time_inside_a_weekend_blackout_moves_to_its_end() -> None:
    # Last rotated on Saturday 2026-05-02 12:00 UTC: 7 days later is inside Fri 18:00-Mon 06:00.
    p = RotationPolicy(every=timedelta(days=7), blackout=("Fri 18:00-Mon 06:00",))
    when, rule = next_rotation(p, now=utc(2026, 5, 2, 12), last_rotated_at=utc(2026, 5, 2, 12))
    assert when == utc(2026, 5, 11, 6)
    assert rule == "every 7d; blackout until Mon 06:00"


def test_due_time_outside_the_blackout_is_unchanged() -> None:
    p = RotationPolicy(every=timedelta(days=7), blackout=("Fri 18:00-Mon 06:00",))
    when, rule = next_rotation(p, now=utc(2026, 5, 6), last_rotated_at=utc(2026, 5, 6))
    assert when == utc(2026, 5, 13)  # a Wednesday
    assert rule == "every 7d"


def test_blackout_is_read_in_the_policy_zone() -> None:
    # Mon 05:30 UTC is 07:30 in Berlin (summer): outside a blackout ending Mon 06:00 Berlin,
    # but inside it when read in UTC.
    last = utc(2026, 5, 4, 5, 30) - timedelta(days=7)
    in_berlin = RotationPolicy(
        every=timedelta(days=7), blackout=("Fri 18:00-Mon 06:00",), tz="Europe/Berlin"
    )
    in_utc = dataclasses.replace(in_berlin, tz=None)
    assert next_rotation(in_berlin, now=last, last_rotated_at=last)[0] == utc(2026, 5, 4, 5, 30)
    assert next_rotation(in_utc, now=last, last_rotated_at=last)[0] == utc(2026, 5, 4, 6)


def test_cron_window_inside_a_blackout_moves_to_the_next_open_occurrence() -> None:
    # Sunday 03:00 with a 1h window is blacked out every weekend; a daily cron takes Monday's.
    p = RotationPolicy(
        cron="0 3 * * *", window=timedelta(hours=1), blackout=("Sat 00:00-Mon 00:00",)
    )
    when, rule = next_rotation(p, now=utc(2026, 5, 1, 12), last_rotated_at=utc(2026, 5, 1, 12))
    assert when == utc(2026, 5, 4, 3)  # Monday; Saturday's and Sunday's windows are closed
    assert rule == "cron '0 3 * * *' window 1h"


def test_cron_whose_every_window_is_blacked_out_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"^every --window of --cron falls in a --blackout$"):
        RotationPolicy(
            cron="0 3 * * 6",
            window=timedelta(hours=2),
            blackout=("Fri 18:00-Mon 06:00",),
            tz="Europe/Berlin",
        )


def test_cron_window_after_a_long_blackout_stretch_is_found_past_it() -> None:
    # Every window blacked out for months but one day a year (the 1st of January is open
    # when it is not a weekend): the search skips whole blackouts, and still answers.
    p = RotationPolicy(
        cron="0 3 1 1 *",
        window=timedelta(hours=1),
        blackout=("Sat 00:00-Mon 00:00",),
    )
    now = utc(2026, 5, 1)  # 2027-01-01 is a Friday
    assert next_rotation(p, now=now, last_rotated_at=now)[0] == utc(2027, 1, 1, 3)


def test_jittered_start_blacked_out_to_the_window_end_takes_the_window_start() -> None:
    # The window 03:00-05:00 is open 03:00-04:00 only: a credential whose offset falls in
    # the closed hour still rotates in that window, not a day later.
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    closed = tuple(f"{d} 04:00-{d} 05:00" for d in days)
    p = RotationPolicy(
        cron="0 3 * * *", window=timedelta(hours=2), jitter=timedelta(hours=2), blackout=closed
    )
    now = utc(2026, 5, 1, 12)
    for i in range(50):
        when, _ = next_rotation(p, now=now, last_rotated_at=now, seed=f"c{i}")
        assert when is not None
        assert utc(2026, 5, 2, 3) <= when < utc(2026, 5, 2, 4)


def test_blackouts_that_touch_are_left_together() -> None:
    p = RotationPolicy(
        every=timedelta(days=7), blackout=("Sat 00:00-Sun 00:00", "Sun 00:00-Sun 12:00")
    )
    last = utc(2026, 5, 2, 6) - timedelta(days=7)  # due Saturday 06:00
    when, rule = next_rotation(p, now=last, last_rotated_at=last)
    assert when == utc(2026, 5, 3, 12)
    assert rule.endswith("blackout until Sun 12:00")


# -- max age and max uses -----------------------------------------------------------------------


def test_max_age_wins_over_a_later_cron_time() -> None:
    p = RotationPolicy(cron="0 0 1 1 *", max_age=timedelta(days=90))  # yearly
    when, rule = next_rotation(p, now=utc(2026, 2, 1), last_rotated_at=utc(2026, 2, 1))
    assert when == utc(2026, 5, 2)
    assert rule == "max age 90d"


def test_max_age_alone_makes_an_on_demand_credential_scheduled() -> None:
    p = RotationPolicy(max_age=timedelta(days=90))
    when, rule = next_rotation(p, now=utc(2026, 2, 1), last_rotated_at=utc(2026, 1, 1))
    assert (when, rule) == (utc(2026, 4, 1), "max age 90d")


def test_schedule_earlier_than_max_age_keeps_the_schedule() -> None:
    p = RotationPolicy(every=timedelta(days=30), max_age=timedelta(days=90))
    assert next_rotation(p, now=utc(2026, 1, 1), last_rotated_at=utc(2026, 1, 1)) == (
        utc(2026, 1, 31),
        "every 30d",
    )


def test_max_uses_reached_is_due_now_whatever_the_schedule() -> None:
    p = RotationPolicy(every=timedelta(days=30), max_uses=3)
    now = utc(2026, 1, 5)
    assert next_rotation(p, now=now, last_rotated_at=utc(2026, 1, 1), use_count=2)[0] == utc(
        2026, 1, 31
    )
    assert next_rotation(p, now=now, last_rotated_at=utc(2026, 1, 1), use_count=3) == (
        now,
        "3 uses reached",
    )


def test_max_uses_reached_inside_a_blackout_waits_for_its_end() -> None:
    p = RotationPolicy(max_uses=3, blackout=("Fri 18:00-Mon 06:00",))
    now = utc(2026, 5, 2, 12)  # Saturday
    assert next_rotation(p, now=now, last_rotated_at=now, use_count=5) == (
        utc(2026, 5, 4, 6),
        "3 uses reached; blackout until Mon 06:00",
    )


def test_no_schedule_is_on_demand() -> None:
    assert next_rotation(
        RotationPolicy(), now=utc(2026, 1, 1), last_rotated_at=utc(2026, 1, 1)
    ) == (
        None,
        "on demand",
    )


# -- inheritance and override -------------------------------------------------------------------


def partial(**options: object) -> dict[str, object]:
    return PolicyInput(**options).partial()  # type: ignore[arg-type]


def test_tag_default_applies_and_the_rule_names_the_tag() -> None:
    r = resolve(
        {},
        tags={"env": "prod"},
        tag_defaults={("env", "prod"): partial(every="30d", grace="10m")},
        tenant="default",
        tenant_default=partial(every="90d", grace="1m", max_uses=100),
    )
    assert r.policy.every == timedelta(days=30)
    assert r.policy.grace == timedelta(minutes=10)
    assert r.policy.max_uses == 100
    assert r.sources["every"] == "tag env=prod"
    assert r.sources["max_uses"] == "tenant default"
    when, rule = next_rotation(
        r.policy, now=utc(2026, 1, 1), last_rotated_at=utc(2026, 1, 1), sources=r.sources
    )
    assert (when, rule) == (utc(2026, 1, 31), "every 30d from tag env=prod")


def test_credential_own_setting_overrides_tag_and_tenant() -> None:
    r = resolve(
        partial(cron="0 3 * * 0"),
        tags={"env": "prod"},
        tag_defaults={("env", "prod"): partial(every="30d")},
        tenant="default",
        tenant_default=partial(every="90d", grace="1m"),
    )
    # The own cron clears the inherited interval instead of clashing with it.
    assert (r.policy.cron, r.policy.every) == ("0 3 * * 0", None)
    assert r.sources["cron"] == "credential"
    assert r.policy.grace == timedelta(minutes=1)
    _, rule = next_rotation(
        r.policy, now=utc(2026, 1, 1), last_rotated_at=utc(2026, 1, 1), sources=r.sources
    )
    assert rule == "cron '0 3 * * 0'"


def test_tenant_default_applies_without_a_matching_tag() -> None:
    r = resolve(
        partial(max_uses=3),
        tags={"env": "dev"},
        tag_defaults={("env", "prod"): partial(every="30d")},
        tenant="acme",
        tenant_default=partial(every="90d"),
    )
    assert r.policy.every == timedelta(days=90)
    assert r.policy.max_uses == 3
    assert r.sources["every"] == "tenant acme"


def test_two_tags_that_disagree_pick_by_key_then_value_and_say_which() -> None:
    defaults = {
        ("team", "pay"): partial(every="7d"),
        ("env", "prod"): partial(every="30d", grace="1h"),
    }
    r = resolve(
        {},
        tags={"team": "pay", "env": "prod"},
        tag_defaults=defaults,
        tenant="default",
        tenant_default=None,
    )
    assert r.policy.every == timedelta(days=30)  # env < team
    assert r.sources["every"] == "tag env=prod over tag team=pay"
    _, rule = next_rotation(
        r.policy, now=utc(2026, 1, 1), last_rotated_at=utc(2026, 1, 1), sources=r.sources
    )
    assert rule == "every 30d from tag env=prod over tag team=pay"


def test_every_policy_field_is_inherited_with_no_code_per_field() -> None:
    full = RotationPolicy(
        cron="0 3 * * 2",  # Tuesday: outside the blackout
        window=timedelta(hours=2),
        grace=timedelta(minutes=7),
        max_uses=9,
        jitter=timedelta(minutes=10),
        blackout=("Fri 18:00-Mon 06:00",),
        tz="Europe/Berlin",
        max_age=timedelta(days=90),
    )
    # Every field but ``every`` (which excludes cron) differs from its default, so each one
    # inherited is seen.
    changed = {
        f.name for f in dataclasses.fields(RotationPolicy) if getattr(full, f.name) != f.default
    }
    assert changed >= {"cron", "window", "grace", "max_uses", "jitter", "blackout", "tz", "max_age"}
    r = resolve(
        {},
        tags={"env": "prod"},
        tag_defaults={("env", "prod"): full.to_json()},
        tenant="default",
        tenant_default=None,
    )
    assert r.policy == full
    assert r.sources == {f.name: "tag env=prod" for f in dataclasses.fields(RotationPolicy)}


def test_merged_policy_that_is_not_valid_names_the_problem_and_its_source() -> None:
    with pytest.raises(PolicyError, match=r"--window needs --cron.*tenant default"):
        resolve(
            {},
            tags={},
            tag_defaults={},
            tenant="default",
            tenant_default=partial(window="2h"),
        )


def test_stored_policies_from_before_missing_new_fields_load_with_defaults() -> None:
    old_row = {"every": 86400.0, "cron": None, "window": None, "grace": 0.0, "max_uses": None}
    p = RotationPolicy.from_json(old_row)
    assert p == RotationPolicy(every=timedelta(days=1), grace=timedelta(0))
    assert RotationPolicy.from_json({}).grace == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"jitter": "0s"}, "--jitter"),
        ({"jitter": "10x"}, "--jitter"),
        ({"max_age": "0d"}, "--max-age"),
        ({"tz": "Mars/Olympus"}, "--tz"),
        ({"tz": "../etc/passwd"}, "--tz"),
        ({"blackout": ("never",)}, "--blackout"),
        ({"every": "1d", "cron": "0 3 * * *"}, "--every"),
    ],
)
def test_bad_policy_options_are_policy_errors_naming_the_option(
    options: dict[str, object], named: str
) -> None:
    with pytest.raises(PolicyError, match=named):
        partial(**options)


def test_parse_duration_still_reads_days() -> None:
    assert parse_duration("90d") == timedelta(days=90)


def test_row_from_before_defaults_owns_only_the_fields_off_the_built_in_default() -> None:
    # policy_own NULL (migration 0007 on an older row): a field at its built-in default is
    # inherited; an own schedule still rules out an inherited one, as an option would.
    cron = RotationPolicy(cron="0 3 * * 2", window=timedelta(hours=2), max_uses=5).to_json()
    assert own_partial(None, cron) == {
        "cron": "0 3 * * 2",
        "every": None,
        "window": 7200.0,
        "max_uses": 5,
    }
    every = RotationPolicy(every=timedelta(days=1), grace=timedelta(0)).to_json()
    assert own_partial(None, every) == {"every": 86400.0, "cron": None, "window": None, "grace": 0}
    assert own_partial(None, RotationPolicy().to_json()) == {}
    assert own_partial({"grace": 60.0}, every) == {"grace": 60.0}
