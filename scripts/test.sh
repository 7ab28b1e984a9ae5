#!/usr/bin/env bash
# The one command that installs everything and runs the whole check suite on a fresh
# clone: system servers (PostgreSQL 15, Redis) the test fixtures start, the venv, then
# ruff, mypy and pytest. Extra arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_BIN_DIR=/usr/lib/postgresql/15/bin

die() {
    echo "scripts/test.sh: $*" >&2
    exit 1
}

# Run a command as root: directly when root, via sudo otherwise (fail if unavailable).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' but not root and sudo is unavailable; install it by hand"
    fi
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# --- Redis: the fixture starts its own redis-server on a free port ------------------
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    echo "==> installing redis-server"
    apt_install redis-server
    # The package may auto-start a system instance on :6379; tests must not rely on it.
    as_root service redis-server stop >/dev/null 2>&1 || true
fi

# --- PostgreSQL 15: the fixture runs initdb/pg_ctl from $PG_BIN_DIR ------------------
if [ ! -x "$PG_BIN_DIR/initdb" ]; then
    echo "==> installing postgresql-15"
    apt_install postgresql-15
    # The package may create and start a 'main' cluster on :5432; tests must not rely on it.
    as_root service postgresql stop >/dev/null 2>&1 || true
    [ -x "$PG_BIN_DIR/initdb" ] || die "postgresql-15 installed but $PG_BIN_DIR/initdb is missing"
fi

# --- Chromium: the dashboard's browser test drives Debian's chromium (never downloaded) ----
if [ ! -x /usr/bin/chromium ]; then
    echo "==> installing chromium"
    apt_install chromium
fi

# --- libfaketime: tests/faults/test_clock_jump.py moves a worker's wall clock ---------
if ! compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null; then
    echo "==> installing faketime"
    apt_install faketime
fi

# --- OpenLDAP slapd: tests/support/ldap_server.py starts its own on free ports ---------
if [ ! -x /usr/sbin/slapd ]; then
    echo "==> installing slapd"
    # debconf must not ask for an admin password; the package's own directory is unused.
    echo "slapd slapd/no_configuration boolean true" | as_root debconf-set-selections
    apt_install --no-install-recommends slapd
    as_root service slapd stop >/dev/null 2>&1 || true
    [ -x /usr/sbin/slapd ] || die "slapd installed but /usr/sbin/slapd is missing"
fi

# --- MariaDB: the mariadb_target fixture runs mariadb-install-db + mariadbd itself ------
if [ ! -x /usr/sbin/mariadbd ] || ! command -v mariadb-install-db >/dev/null 2>&1; then
    echo "==> installing mariadb-server"
    apt_install --no-install-recommends mariadb-server
    # The package may start a system instance on :3306; tests must not rely on it.
    as_root service mariadb stop >/dev/null 2>&1 || true
fi

# --- Python venv (>= 3.11) ----------------------------------------------------------
python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}
if [ ! -x .venv/bin/python ]; then
    python=""
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            python=$candidate
            break
        fi
    done
    [ -n "$python" ] || die "need Python >= 3.11 (python3.11 or python3) to create .venv"
    echo "==> creating .venv with $python ($("$python" --version 2>&1))"
    "$python" -m venv .venv
fi
python_ok .venv/bin/python || die ".venv has Python < 3.11; remove .venv and rerun"

echo "==> installing rotator[dev,otlp] into .venv"
.venv/bin/pip install -q -e '.[dev,otlp]'

# --- checks ---------------------------------------------------------------------------
echo "==> ruff"
.venv/bin/ruff check src tests
echo "==> mypy"
.venv/bin/mypy src
echo "==> pytest"
# Bytecode caches: an environment with PYTHONDONTWRITEBYTECODE set makes every `rotator`
# process the suite starts compile src/ again (~0.2 s of CPU each), and each
# pytest worker rewrite and compile every test module. Compile once; let pytest cache too.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/python -m compileall -q src tests
# Two workers: the suite waits on servers and subprocesses as much as it computes.
.venv/bin/pytest -q -n 2 "$@"
