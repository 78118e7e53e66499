#!/usr/bin/env bash
# The pipeline end to end on the embedded default: installs what is missing, then
# `protoguard demo` (starts the local Kafka + Redis stack, streams the bundled dataset, stops it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/bootstrap.sh" | tail -n 1)"
cd "$here"
exec "$venv/bin/protoguard" demo "$@"
