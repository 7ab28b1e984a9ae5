"""Wall time of ``rotator credential get NAME`` on SQLite, and where its imports go.

    python -m bench.cli_startup_bench [--runs 20] [--compare OLD_SRC] [--importtime-runs 5]

Makes a throwaway store (``rotator init`` with a key file, one ``local`` credential from
``--value-stdin``), then runs the installed console script ``--runs`` times and prints the median
wall time. With ``--compare OLD_SRC`` (a ``src`` folder, e.g. from ``git archive OLD src``) the
same console script runs that source through ``PYTHONPATH``, interleaved run by run with the
working tree's, so both see the same load. A last row, ``floor``, times an interpreter that
only imports the libraries the command cannot avoid (``FLOOR``), interleaved the same way.
``-X importtime`` runs then give each tree's import self-time summed by top-level package
(median over runs) and the packages only one of them imports.

Python is run as the environment has it: with ``PYTHONDONTWRITEBYTECODE`` set (as in this
workplace) rotator's own modules are compiled from source on every call; ``--pyc`` compiles
them first into ``__pycache__`` (as an installed package has them).
"""

from __future__ import annotations

import argparse
import collections
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROTATOR = str(Path(sys.executable).parent / "rotator")
NAME = "bench/startup"
VALUE = b"startup-bench-value"
ARGS = ("credential", "get", NAME)
# The libraries `credential get` cannot do without: SQLAlchemy (the store), typer with the
# pydantic adapters it builds to coerce every argument (typer >= 0.2x), cryptography's AES-GCM.
FLOOR = (
    "import sqlalchemy, sqlalchemy.dialects.sqlite, typer, typer._adapters, "
    "cryptography.hazmat.primitives.ciphers.aead"
)


def make_store(home: Path) -> None:
    env = {**os.environ, "ROTATOR_HOME": str(home)}
    env.pop("ROTATOR_DB", None)
    env.pop("ROTATOR_PASSPHRASE", None)
    subprocess.run([ROTATOR, "init"], env=env, check=True, capture_output=True)
    subprocess.run(
        [ROTATOR, "credential", "add", NAME, "--connector", "local", "--value-stdin"],
        env=env,
        input=VALUE,
        check=True,
        capture_output=True,
    )


def tree_env(home: Path, src: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env["ROTATOR_HOME"] = str(home)
    env.pop("PYTHONPATH", None)
    if src is not None:
        env["PYTHONPATH"] = src
    return env


def wall_once(env: dict[str, str]) -> float:
    floor = env.get("BENCH_FLOOR") == "1"
    cmd = [sys.executable, "-c", FLOOR] if floor else [ROTATOR, *ARGS]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    took = time.perf_counter() - t
    if proc.returncode != 0 or (not floor and proc.stdout != VALUE + b"\n"):
        raise SystemExit(f"credential get failed: {proc.stderr.decode(errors='replace')}")
    return took


def import_profile(env: dict[str, str]) -> dict[str, int]:
    """Self-time (microseconds) of every module one ``credential get`` imports."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", ROTATOR, *ARGS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            self_us, _, name = line.split(":", 1)[1].split("|")
            out[name.strip()] = int(self_us)
    return out


def by_package(profiles: list[dict[str, int]]) -> dict[str, float]:
    per_run = []
    for prof in profiles:
        c: collections.Counter[str] = collections.Counter()
        for mod, us in prof.items():
            c[mod.split(".")[0]] += us
        per_run.append(c)
    keys = {k for c in per_run for k in c}
    return {k: statistics.median(c.get(k, 0) for c in per_run) / 1000 for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cli_startup_bench")
    ap.add_argument("--runs", type=int, default=20, help="wall-time runs per tree")
    ap.add_argument("--importtime-runs", type=int, default=5, help="-X importtime runs per tree")
    ap.add_argument("--compare", metavar="OLD_SRC", help="a src folder to compare against")
    ap.add_argument("--pyc", action="store_true", help="compile rotator's modules first")
    ap.add_argument("--top", type=int, default=12, help="packages to list")
    args = ap.parse_args(argv)

    import rotator

    trees: dict[str, str | None] = {"working tree": None}
    if args.compare:
        trees = {"compared": str(Path(args.compare).resolve()), **trees}
    if args.pyc:
        for src in trees.values():
            root = Path(src) / "rotator" if src else Path(rotator.__file__).parent
            compileall.compile_dir(str(root), quiet=1)
    with tempfile.TemporaryDirectory(prefix="rotator-startup-") as tmp:
        home = Path(tmp) / "home"
        make_store(home)
        envs = {label: tree_env(home, src) for label, src in trees.items()}
        envs["floor"] = {**tree_env(home, None), "BENCH_FLOOR": "1"}
        for env in envs.values():
            wall_once(env)  # warm the page cache
        walls: dict[str, list[float]] = {label: [] for label in envs}
        for _ in range(args.runs):
            for label, env in envs.items():
                walls[label].append(wall_once(env))
        profiles = {
            label: [import_profile(env) for _ in range(args.importtime_runs)]
            for label, env in envs.items()
            if label != "floor"
        }
    print(f"rotator credential get, SQLite, key file; {args.runs} runs per tree, interleaved")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores)")
    for label, ws in walls.items():
        ws.sort()
        print(
            f"  {label:12}  median {statistics.median(ws) * 1000:5.0f} ms   "
            f"min {ws[0] * 1000:5.0f}   max {ws[-1] * 1000:5.0f}"
        )
    for label, profs in profiles.items():
        pk = by_package(profs)
        total = sum(pk.values())
        print(f"{label}: import self-time {total:.0f} ms (median of {len(profs)}), by package:")
        for pkg, ms in sorted(pk.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"    {pkg:22} {ms:6.1f} ms")
    if len(profiles) == 2:
        # Packages (and rotator's modules) that only one tree imports.
        def tops(prof: dict[str, int]) -> set[str]:
            return {m if m.startswith("rotator") else m.split(".")[0] for m in prof}

        (la, pa), (lb, pb) = profiles.items()
        ta, tb = tops(pa[0]), tops(pb[0])
        for label, only in ((la, ta - tb), (lb, tb - ta)):
            print(f"only {label} imports: {', '.join(sorted(only)) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
