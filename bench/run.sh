#!/usr/bin/env bash
# The benchmark harness: builds the release binary and the harness, then runs every
# scenario against a throwaway Postgres it starts and stops itself. Writes
# bench/RESULTS.md. Pass --quick for a short smoke run (results not written).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench harness -- "$@"
