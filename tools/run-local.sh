#!/usr/bin/env bash
# `make run`: three local redis-servers on loopback and resproxy in front of them (config/local.yml),
# in the foreground. Ctrl-C stops all of them (each by its PID).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=$(mktemp -d /tmp/resproxy-local.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for port in 7001 7002 7003; do
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --dir "$DATA" --logfile "$DATA/redis-$port.log" --daemonize no &
    pids+=($!)
done
for port in 7001 7002 7003; do
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.05
    done
    redis-cli -p "$port" ping >/dev/null || { echo "redis-server on port $port did not start" >&2; exit 1; }
done
echo "redis-servers up on 127.0.0.1:7001-7003 (logs in $DATA); starting resproxy on 127.0.0.1:22121 (metrics: http://127.0.0.1:9121/metrics)"
"$PY" -m proxy -c config/local.yml "$@" &
pids+=($!)
wait "${pids[-1]}"
