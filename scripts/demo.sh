#!/usr/bin/env bash
# Install rotator into .venv and run the main job on the embedded default (SQLite):
# init a store, add a few `local` credentials, rotate them, list them, verify the audit chain.
# ROTATOR_HOME defaults to ./.demo-home so the demo never touches a real store.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python=python3
    command -v python3.11 >/dev/null 2>&1 && python=python3.11
    "$python" -m venv .venv
fi
.venv/bin/pip install -q -e .

export ROTATOR_HOME="${ROTATOR_HOME:-$PWD/.demo-home}"
unset ROTATOR_DB
rotator=.venv/bin/rotator
set -x
$rotator init
for name in prod/payments/api-key prod/search/token staging/payments/api-key; do
    $rotator credential show "$name" >/dev/null 2>&1 ||
        $rotator credential add "$name" --connector local --generate \
            --tag env="${name%%/*}" --every 30d --grace 10m
done
$rotator credential list
$rotator rotate --tag env=prod --json
$rotator credential show prod/payments/api-key
$rotator audit verify
