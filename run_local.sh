#!/usr/bin/env bash
# The demo job, end to end on this machine: installs what it needs, makes a small demo image
# set (unless you pass --input), starts the project's local prediction server (unless you
# pass --endpoint), runs the pipeline on DirectRunner, prints the summary and the outputs,
# and stops the server. Extra arguments pass through to the pipeline (they win over
# configs/local.yaml), e.g.:  ./run_local.sh --output_format parquet --max_concurrent_requests 4
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh

args=("$@")
has_flag() { local f; for f in "${args[@]}"; do [[ "$f" == "$1" || "$f" == "$1="* ]] && return 0; done; return 1; }

if ! has_flag --input; then
    "$PY" -m localserver.demo demo/images
fi

server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

endpoint_args=()
if ! has_flag --endpoint; then
    server_log="$(mktemp)"
    "$PY" -m localserver --host 127.0.0.1 --port 0 --latency_ms 50 > "$server_log" 2>&1 &
    server_pid=$!
    url=""
    for _ in $(seq 1 100); do
        url="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$server_log" || true)"
        [ -n "$url" ] && break
        kill -0 "$server_pid" 2>/dev/null || { cat "$server_log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$url" ] || { echo "run_local: the local prediction server did not start" >&2; exit 1; }
    echo "run_local: local prediction server at $url" >&2
    endpoint_args=(--endpoint "$url/v1/projects/demo/models/colors:predict")
fi

"$PY" -m pipeline.run --config configs/local.yaml "${endpoint_args[@]}" "$@"

if [ -n "$server_pid" ]; then
    "$PY" - "$url" <<'PYEOF'
import sys
from localserver import LocalServer
stats = LocalServer.attach(sys.argv[1]).stats()
print(f"local server: {stats['requests']} requests, {stats['instances']} instances, largest "
      f"request {stats['max_request_bytes']} bytes / {stats['max_request_instances']} "
      f"instances, at most {stats['max_in_flight']} in flight", file=sys.stderr)
PYEOF
fi
