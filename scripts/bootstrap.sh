#!/usr/bin/env bash
# Installs what protoguard needs on a fresh Debian machine, reusing what is already there:
#   - a Python venv (default ~/.cache/protoguard/venv, outside the clone so every clone reuses
#     the multi-GB torch install) with the project's dependencies, reinstalled only when
#     pyproject.toml changes; the project itself is (re)linked editable from this clone;
#   - redis-server from Debian's package (apt-get) when missing;
#   - the Kafka broker jars from Maven Central (mvn), cached under ~/.cache/protoguard.
# Idempotent: a second run takes a few seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PROTOGUARD_VENV:-$HOME/.cache/protoguard/venv}"
python="${PYTHON:-python3}"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "bootstrap: installing redis-server (apt-get)" >&2
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo -n"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bootstrap: $tool is required (Java 17+ and Maven)" >&2; exit 1; }
done

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating venv $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
stamp="$venv/.protoguard-deps"
want="$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing dependencies into $venv (first run downloads torch, a few GB)" >&2
  "$venv/bin/python" -m pip install -q -e "$here[test,bench,compression]"
  echo "$want" > "$stamp"
else
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here" >/dev/null 2>&1 \
    || "$venv/bin/python" -m pip install -q --no-deps -e "$here"
fi
# Resolve the broker jars now (cached), so the first `stack up` is not slowed by downloads.
(cd "$here" && "$venv/bin/python" -c "from protoguard.deploy.stack import LocalStack; from protoguard.schemas.settings import StackSettings; LocalStack(StackSettings()).ensure_kafka_jars()")
# kubeconform for the deploy/ manifest tests: built once per pinned version from the Go module
# proxy into ~/.cache/protoguard/tools (skipped, and those tests skip, where Go is missing).
if command -v go >/dev/null 2>&1; then
  (cd "$here" && "$venv/bin/python" -c "from protoguard.deploy.validation import ensure_kubeconform; ensure_kubeconform()") >&2 \
    || echo "bootstrap: building kubeconform failed; the deploy/ manifest tests will say why" >&2
else
  echo "bootstrap: go not found; kubeconform (deploy/ manifest validation) will be skipped" >&2
fi
echo "$venv"
