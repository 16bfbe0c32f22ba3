#!/usr/bin/env bash
# Installs what the tests need and runs the whole pytest suite. The tests start their own
# servers (the local prediction server, the GCS emulator) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
set +e
"$PY" -m pytest -q -p no:cacheprovider tests "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "run_tests: pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
