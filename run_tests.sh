#!/usr/bin/env bash
# Installs what the tests need and runs the whole pytest suite (or the tests named:
# ./run_tests.sh tests/test_read.py -k fifo). The tests start their own
# servers (the local prediction server, the GCS emulator, KServe and MLServer) on 127.0.0.1.
# They mostly wait on servers and subprocesses, so pytest-xdist runs whole modules in
# BATCH_PREDICT_TEST_WORKERS (default 3) processes at once (0: in this one).
set -euo pipefail
cd "$(dirname "$0")"
# The real model servers' own virtualenvs install meanwhile (the tests wait for them).
mkdir -p .venv-servers
for server in kserve mlserver; do
    python3 tests/servers.py "$server" > ".venv-servers/$server.log" 2>&1 &
done
source scripts/bootstrap.sh
set +e
trap 'exit 130' INT  # Ctrl-C: stop here, not go on to the second pass
# pytest.ini: testpaths = tests; conftest.py orders the modules for --dist loadfile.
# Tests marked `alone` (a per-second quota) run afterwards, with nothing beside them.
"$PY" -m pytest -q -p no:cacheprovider -n "${BATCH_PREDICT_TEST_WORKERS:-3}" \
    --dist loadfile --no-loadscope-reorder -m "not alone" "$@"
parallel=$?
"$PY" -m pytest -q -p no:cacheprovider -m alone "$@"
alone=$?
wait  # for the server installs, when no test needed them
set -e
if [ "$parallel" -eq 5 ] && [ "$alone" -eq 5 ]; then
    echo "run_tests: pytest collected no tests: failing" >&2
    exit 1
fi
for status in "$parallel" "$alone"; do
    if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
        exit "$status"
    fi
done
exit 0
