#!/usr/bin/env bash
# A cached virtualenv for a real model server from PyPI, kept apart from the project's venv
# (model servers pin protobuf, grpcio, fastapi... differently from Apache Beam).
#   scripts/server_venv.sh NAME REQUIREMENT...   -> prints NAME's python
# Idempotent: reinstalls only when the requirement list changes. Lives under
# ${BATCH_PREDICT_SERVER_VENVS:-.venv-servers}/NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"; shift
venv="${BATCH_PREDICT_SERVER_VENVS:-$PWD/.venv-servers}/$name"
stamp="$venv/.installed-$(printf '%s\n' "$@" | cksum | cut -d' ' -f1)"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # one install at a time per server; a second caller waits, then finds it done
if [ ! -f "$stamp" ]; then
    echo "server_venv: installing $* into $venv (first run: a minute or two)" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet "$@" >&2
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi
echo "$venv/bin/python"
