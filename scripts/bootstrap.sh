# Sourced by run_local.sh and run_tests.sh: a virtualenv with the project installed.
# Idempotent: reinstalls only when setup.py changed. Needs only python3 on the machine.
VENV="${BATCH_PREDICT_VENV:-$PWD/.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "bootstrap: creating virtualenv $VENV" >&2
    python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cksum < setup.py | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing the project and its dependencies (first run: a few minutes)" >&2
    "$PY" -m pip install --quiet --upgrade pip >&2
    "$PY" -m pip install --quiet -e ".[test,model]" >&2
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
