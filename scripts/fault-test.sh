#!/usr/bin/env bash
# Fault-injection check of the delivery guarantees (nothing lost, nothing duplicated).
#
#   scripts/fault-test.sh [--spec logins (default) | another in scripts/fault_specs.py]
#                         [--messages N (20000)] [--processes P (1)] [--kills K (5)] [--invalid K (N/100)] [--seed S]
#
# Builds the release binary, starts its own PostgreSQL and LocalStack (scripts/services.sh, on
# free ports and its own state directory, since it stops and restarts them), loads N messages,
# runs P engine processes on one queue with the shipped spec and injects faults: SIGKILL of an
# engine at five random moments, PostgreSQL stopped for 10 s, the LocalStack process restarted
# once. Then it checks rows (the spec's own check: none lost, none duplicated), rejects and the
# queue, and prints one line ending in PASS or FAIL (exit code 0 or 1).
# The orchestration itself is scripts/fault_test.py (see there for how the LocalStack restart
# is handled: the community edition does not persist queues).
#
# Environment: FAULT_PGPORT, FAULT_SQS_PORT (default: free ports chosen at start),
#              FAULT_DIR (<project>/.local/fault),
#              ETL_VENV_DIR (where the LocalStack virtualenvs live; <project>/.local),
#              FAULT_PROFILE (release; "dev" uses the debug build, e.g. when the test suite has just
#              built it and a release build would take longer than the run),
#              FAULT_KEEP_SERVICES=1 leaves the services running afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Free ports by default: a fixed one can be held by a leftover server from an earlier run.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
FAULT_PGPORT=${FAULT_PGPORT:-$(free_port)}
FAULT_SQS_PORT=${FAULT_SQS_PORT:-$(free_port)}
FAULT_DIR=${FAULT_DIR:-"$ROOT/.local/fault"}
export ETL_VENV_DIR=${ETL_VENV_DIR:-"$ROOT/.local"}

for arg in "$@"; do
    case $arg in
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    esac
done

services() {
    ETL_LOCAL_DIR="$FAULT_DIR" PGPORT=$FAULT_PGPORT SQS_PORT=$FAULT_SQS_PORT bash scripts/services.sh "$@"
}
down() {
    if [ "${FAULT_KEEP_SERVICES:-0}" != 1 ]; then services down >/dev/null 2>&1 || true; fi
}

FAULT_PROFILE=${FAULT_PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-"$ROOT/target"}
case $FAULT_PROFILE in
    release) BIN="$TARGET_DIR/release/etl-engine"; BUILD=(--release) ;;
    dev|debug) BIN="$TARGET_DIR/debug/etl-engine"; BUILD=() ;;
    *) echo "error: FAULT_PROFILE must be release or dev, not $FAULT_PROFILE" >&2; exit 2 ;;
esac
echo "==> fault-test: building the $FAULT_PROFILE binary" >&2
cargo build "${BUILD[@]}" --quiet --bin etl-engine

mkdir -p "$FAULT_DIR"
trap down EXIT
echo "==> fault-test: starting PostgreSQL on $FAULT_PGPORT and LocalStack on $FAULT_SQS_PORT (state: $FAULT_DIR)" >&2
services up >"$FAULT_DIR/services-up.log" 2>&1 || { cat "$FAULT_DIR/services-up.log" >&2; exit 1; }

PG_BIN=/usr/lib/postgresql/15/bin
[ -x "$PG_BIN/psql" ] || PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

"$ETL_VENV_DIR/venv-localstack/bin/python" scripts/fault_test.py \
    --engine "$BIN" --root "$ROOT" --state-dir "$FAULT_DIR" \
    --pg-bin "$PG_BIN" --pg-port "$FAULT_PGPORT" --sqs-port "$FAULT_SQS_PORT" "$@"
