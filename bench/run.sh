#!/usr/bin/env bash
# Run all benchmarks (crypto, the store and the engine on SQLite and PostgreSQL 15, the postgres
# connector, reads, the CLI, the REST API) and print the results. Flags go to `python -m bench`, e.g.:
#   bench/run.sh --n 20000 --db sqlite
#   bench/run.sh --skip-crypto --skip-store --skip-engine --skip-postgres --skip-reads \
#       --skip-cli --skip-api --soak-minutes 3     # the soak alone, SQLite then PostgreSQL
#
# --snapshot (first flag): benchmark a `git archive` of HEAD's src/ instead of the working
# tree, so commits or edits made by others while it runs cannot mix two versions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
if [ "${1:-}" = "--snapshot" ]; then
    shift
    snap=$(mktemp -d -t rotator-bench-src-XXXXXX)
    trap 'rm -rf "$snap"' EXIT
    git archive HEAD src | tar -x -C "$snap"
    export PYTHONPATH="$snap/src${PYTHONPATH:+:$PYTHONPATH}"
    export ROTATOR_BENCH_SOURCE="git archive of $(git rev-parse --short HEAD)"
fi
"$PY" -m bench "$@"
