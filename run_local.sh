#!/usr/bin/env bash
# The demo job, end to end on this machine: installs what it needs, makes a small demo image
# set (unless you pass --input), starts the project's local prediction server (unless you
# pass --endpoint), runs the pipeline on DirectRunner, prints the summary and the outputs,
# and stops the server. Extra arguments pass through to the pipeline (they win over
# configs/local.yaml), e.g.:  ./run_local.sh --output_format parquet --max_concurrent_requests 4
# except the local server's model flags (docs/model.md), which go to the server. The default
# model is EfficientNet-Lite0 (ImageNet labels, real photos among the demo images):
#   ./run_local.sh --model colour                     (the fast colour model)
#   ./run_local.sh --model my.onnx --labels labels.txt --input_size 299
#   ./run_local.sh --protocol v2 --binary_data      (the server's Open Inference Protocol)
#   ./run_local.sh --embeddings     (the model's embeddings too; prints each photo's nearest)
set -euo pipefail
caller="$PWD"  # relative paths on the command line are the caller's
cd "$(dirname "$0")"
source scripts/bootstrap.sh

SERVER_FLAGS=" --model --labels --input_size --crop_fraction --mean --std --layout --top_k "
PATH_FLAGS=" --input --output --errors --config --label_names_file --retry_dead_letters --labels "
# a path given relative to the caller's folder, made absolute (the script runs in the repo)
from_caller() {
    case "$2" in
        /*|*://*|'') printf '%s' "$2" ;;
        *) if [[ "$PATH_FLAGS" == *" $1 "* ]] ||
              [[ "$1" == --model && ( "$2" == *.onnx || -e "$caller/$2" ) ]]
           then printf '%s/%s' "$caller" "$2"; else printf '%s' "$2"; fi ;;
    esac
}
args=()
server_args=()
embeddings=""
while [ $# -gt 0 ]; do
    name="${1%%=*}"
    if [ "$1" = --embeddings ]; then
        embeddings=1; server_args+=(--embeddings); shift
    elif [[ "$SERVER_FLAGS$PATH_FLAGS" == *" $name "* ]]; then
        if [[ "$1" == *=* ]]; then value="${1#*=}"; shift
        else value="${2:?run_local: $1 needs a value}"; shift 2; fi
        value="$(from_caller "$name" "$value")"
        if [[ "$SERVER_FLAGS" == *" $name "* ]]; then server_args+=("$name" "$value")
        else args+=("$name" "$value"); fi
    else
        args+=("$1"); shift
    fi
done
# ${a[@]+"${a[@]}"}: an empty array is "unbound" to bash < 4.4 (macOS's 3.2) under set -u
has_flag() { local f; for f in ${args[@]+"${args[@]}"}; do [[ "$f" == "$1" || "$f" == "$1="* ]] && return 0; done; return 1; }
[[ " ${server_args[*]-} " == *" --model "* ]] || server_args+=(--model efficientnet_lite0)
if [ -n "$embeddings" ] && ! has_flag --embedding_field; then
    args+=(--embedding_field embedding)
fi

if ! has_flag --input; then
    "$PY" -m localserver.demo demo/images
fi

server_pid=""
server_log=""
summary_json=""
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
    rm -f "$server_log" "$summary_json"
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# a dry run sends nothing: no server (but v2 reads the model's metadata before the job)
dry_run_without_server() {
    local i
    has_flag --dry_run || return 1
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[$i]}" in
            --dry_run=[Ff]alse|--dry_run=0) return 1 ;;
            --dry_run) case "${args[$((i + 1))]:-}" in [Ff]alse|0) return 1 ;; esac ;;
            --protocol=v2) return 1 ;;
            --protocol) [ "${args[$((i + 1))]:-}" != v2 ] || return 1 ;;
        esac
    done
}

endpoint_args=()
if dry_run_without_server && ! has_flag --endpoint; then
    endpoint_args=(--endpoint "http://127.0.0.1:9/v1/projects/demo/models/dry-run:predict")
elif ! has_flag --endpoint; then
    server_log="$(mktemp)"
    "$PY" -m localserver --host 127.0.0.1 --port 0 --latency_ms 50 ${server_args[@]+"${server_args[@]}"} \
        > "$server_log" 2>&1 &
    server_pid=$!
    url=""
    for _ in $(seq 1 300); do
        url="$(grep -m1 -o 'http://127\.0\.0\.1:[0-9]*' "$server_log" || true)"
        [ -n "$url" ] && break
        kill -0 "$server_pid" 2>/dev/null || { cat "$server_log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$url" ] || { echo "run_local: the local prediction server did not start" >&2; exit 1; }
    model="$("$PY" -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1] + "/config", timeout=10))["model_name"])' "$url")"
    echo "run_local: local prediction server at $url, model $model:" >&2
    grep '^  ' "$server_log" >&2 || true  # its predict URLs, one protocol a line
    path="/v1/projects/demo/models/$model:predict"
    v2_path="/v2/models/$model/infer"
    for ((i = 0; i < ${#args[@]}; i++)); do  # --protocol v2: the server's v2 route
        case "${args[$i]}" in
            --protocol=v2) path="$v2_path" ;;
            --protocol) if [ "${args[$((i + 1))]:-}" = v2 ]; then path="$v2_path"; fi ;;
        esac
    done
    endpoint_args=(--endpoint "$url$path")
fi

summary_json="$(mktemp)"
"$PY" -m pipeline.run --config configs/local.yaml ${endpoint_args[@]+"${endpoint_args[@]}"} \
    ${args[@]+"${args[@]}"} | tee "$summary_json"
# the run's output prefix; none for a --dry_run, which sent and wrote nothing
output="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("output", ""))' "$summary_json")"
if [ -z "$output" ]; then
    exit 0
fi
if ! has_flag --input; then
    "$PY" -m localserver.demo --show "$output" >&2 || true
else
    "$PY" -m localserver.demo --show_top "$output" >&2 || true
fi
if [ -n "$embeddings" ]; then
    "$PY" -m localserver.demo --nearest "$output" >&2 || true
fi

if [ -n "$server_pid" ]; then
    "$PY" - "$url" <<'PYEOF'
import sys
from localserver import LocalServer
stats = LocalServer.attach(sys.argv[1]).stats()
plural = "" if stats["requests"] == 1 else "s"
print(f"local server: {stats['requests']} request{plural}, {stats['instances']} instances, largest "
      f"request {stats['max_request_bytes']} bytes / {stats['max_request_instances']} "
      f"instances, at most {stats['max_in_flight']} in flight", file=sys.stderr)
PYEOF
fi
