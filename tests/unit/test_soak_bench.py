"""bench/soak.py's pure parts (percentiles, windows, the flatness verdict, the CSV), on
synthetic samples, so the soak script cannot rot between the runs that use it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from bench import soak
from bench.soak import Read, Sample


def _samples(
    seconds: int,
    rss_per_min: float,
    fds: list[int] | None = None,
    sockets: list[int] | None = None,
    *,
    leak_every_s: int = 0,
    leak_sockets: bool = False,
) -> list[Sample]:
    out = []
    for t in range(1, seconds + 1):
        leaked = t // leak_every_s if leak_every_s else 0
        n_sockets = (sockets[t % len(sockets)] if sockets else 0) + leaked * leak_sockets
        out.append(
            Sample(
                t=float(t),
                rss_mib=100.0 + rss_per_min * t / 60 + (0.3 if t % 2 else -0.3),  # +- noise
                fds=(fds[t % len(fds)] if fds else 20) + leaked,
                sockets=n_sockets,
                threads=9,
                rotations=5 * t,
                rotations_failed=0,
            )
        )
    return out


def test_percentile_is_nearest_rank_so_every_figure_is_a_latency_that_happened() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert soak.percentile(values, 50) == 50.0
    assert soak.percentile(values, 99) == 99.0
    assert soak.percentile(values, 100) == 100.0
    assert soak.percentile([7.0, 1.0, 3.0], 99) == 7.0  # unsorted input, tiny sample
    assert math.isnan(soak.percentile([], 99))


def test_slope_per_minute_is_the_least_squares_slope() -> None:
    ts = [float(t) for t in range(120)]
    assert soak.slope_per_min(ts, [2.0 + t / 30 for t in ts]) == pytest.approx(2.0)
    assert soak.slope_per_min([1.0], [5.0]) == 0.0


def test_windows_bin_reads_by_scheduled_time_and_rates_by_counter_deltas() -> None:
    samples = [
        Sample(1.0, 100.0, 20, 9, rotations=10, rotations_failed=0, cpu_s=0.5),
        Sample(2.0, 100.0, 20, 9, rotations=14, rotations_failed=1, cpu_s=1.0),
        Sample(3.0, 100.0, 20, 9, rotations=20, rotations_failed=1, cpu_s=1.25),
    ]
    reads = [
        Read(0.2, 0.004, "sdk", True),
        Read(1.0, 0.006, "sdk", True),  # at the sample's own time: that window
        Read(1.5, 0.500, "raw", False, "Unreachable"),  # a stall, scheduled in window 2
        Read(2.9, 0.002, "sdk", True),
        Read(3.5, 0.002, "sdk", True),  # after the last sample: dropped
    ]
    rows = soak.windows(samples, reads)
    assert [r.reads for r in rows] == [2, 1, 1]
    assert [r.reads_failed for r in rows] == [0, 1, 0]
    assert rows[1].p99_ms == 500.0
    assert rows[0].max_ms == 6.0
    assert [r.rotations_per_s for r in rows] == [0.0, 4.0, 6.0]
    assert [r.cpu_pct for r in rows] == [0.0, 50.0, 25.0]  # serve's CPU share per window


def test_verdict_is_flat_for_noise_and_not_for_a_leak_of_memory_files_or_sockets() -> None:
    assert soak.verdict(_samples(120, rss_per_min=0.0)) == (True, [])
    flat, why = soak.verdict(_samples(120, rss_per_min=3.0))
    assert not flat
    assert why[0].startswith("RSS grows 2.9")
    # Connections coming and going swing the socket count by tens: not a leak.
    churn = [30, 64, 45, 38, 60]
    assert soak.verdict(_samples(120, 0.0, fds=churn, sockets=churn), socket_bound=70)[0]
    # A file kept every 10 s: the non-socket floor rises.
    flat, why = soak.verdict(_samples(120, 0.0, fds=[20, 23], leak_every_s=10))
    assert not flat
    assert why == [f"the non-socket fd floor rose by 8 (limit {soak.FILE_FLOOR_GROWTH_MAX})"]
    # A socket kept every 10 s: past the bound the clients explain.
    leak = _samples(120, 0.0, fds=churn, sockets=churn, leak_every_s=10, leak_sockets=True)
    flat, why = soak.verdict(leak, socket_bound=70)
    assert not flat
    assert why == ["75 sockets open, more than the load explains (70)"]
    assert soak.verdict(_samples(2, 0.0))[0] is False  # too short to judge is not flat


def test_summary_excludes_warm_up_from_the_verdict_and_splits_latency_by_kind() -> None:
    warm = [Sample(float(t), 50.0 + t, 10 + t, 5, 0, 0) for t in range(1, 31)]  # climbing
    steady = [
        Sample(s.t + 30, s.rss_mib, s.fds, s.threads, s.rotations, 0) for s in _samples(150, 0.0)
    ]
    reads = [
        Read(float(t), 0.001 * (1 + t % 10), "sdk" if t % 3 else "raw", True) for t in range(1, 181)
    ]
    s = soak.summarize([*warm, *steady], reads, warmup_s=30.0)
    assert s.flat, s.why
    assert s.fd_min == s.fd_max == 20
    assert s.file_fd_floor_growth == 0
    assert s.rss_first_min_mib < s.rss_last_min_mib
    assert set(s.read_ms) == {"all", "raw", "sdk"}
    assert s.read_ms["all"]["n"] == 180
    assert s.read_ms["all"]["max"] == 10.0
    assert s.reads_failed == 0
    assert "verdict: flat" in soak.format_summary(s, {})
    assert not soak.summarize([*warm, *steady], reads, warmup_s=0.0).flat


def test_csv_has_one_row_per_window_with_blank_latency_where_nothing_was_read(
    tmp_path: Path,
) -> None:
    samples = _samples(3, 0.0)
    rows = soak.windows(samples, [Read(0.5, 0.01, "sdk", True)])
    path = tmp_path / "soak.csv"
    soak.write_csv(path, rows)
    with path.open() as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == list(soak.CSV_FIELDS)
    assert [r["reads"] for r in got] == ["1", "0", "0"]
    assert got[0]["read_p99_ms"] == "10.000"
    assert got[1]["read_p99_ms"] == ""
    assert got[2]["rotations_total"] == "15"


def test_rotation_counts_sum_the_rotations_counter_by_result_or_trigger() -> None:
    text = (
        "# HELP rotator_rotations_total Rotations ended.\n"
        "# TYPE rotator_rotations_total counter\n"
        'rotator_rotations_total{connector="local",result="rotated",trigger="manual"} 7.0\n'
        'rotator_rotations_total{connector="http",result="rotated",trigger="schedule"} 3.0\n'
        'rotator_rotations_total{connector="http",result="failed",trigger="manual"} 1.0\n'
        'rotator_rotations_created{connector="http",result="failed",trigger="manual"} 1.7e9\n'
        "# TYPE rotator_rotations_in_flight gauge\n"
        "rotator_rotations_in_flight 2.0\n"
    )
    assert soak.rotation_counts(text) == {"rotated": 10, "failed": 1}
    assert soak.rotation_counts(text, "trigger") == {"manual": 8, "schedule": 3}


def test_process_figures_come_from_proc_for_any_pid() -> None:
    import os

    rss, threads, fds = soak.proc_figures(os.getpid())
    assert rss > 1.0
    assert threads >= 1
    assert fds >= 3  # stdin, stdout, stderr at least
    assert soak.proc_cpu_s(os.getpid()) > 0.0
