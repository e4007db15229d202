#!/usr/bin/env bash
# The project's test command: sets up .venv, lints, runs the test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
exec .venv/bin/python -m pytest -q "$@"
