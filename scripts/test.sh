#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test, the integration tests
# included (they start one real Kafka 4.x broker and one redis-server for the session).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/bootstrap.sh" | tail -n 1)"
cd "$here"
export PYTHONHASHSEED=0
"$venv/bin/python" -m pytest -p no:cacheprovider -q tests "$@"
