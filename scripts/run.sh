#!/usr/bin/env bash
# Run the diffusionsat CLI from the project's own environment (set up on first use).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" >&2
exec "$root/.venv/bin/diffusionsat" "$@"
