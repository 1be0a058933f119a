#!/usr/bin/env bash
# Fault-injection check of the delivery guarantees (nothing lost, nothing duplicated).
#
#   scripts/fault-test.sh [--messages N (20000)] [--processes P (1)] [--invalid K (N/100)] [--seed S]
#
# Builds the release binary, starts its own PostgreSQL and LocalStack (scripts/services.sh, on
# their own ports and state directory, since it stops and restarts them), loads N messages, runs
# P engine processes and injects faults: SIGKILL of an engine at three random moments, PostgreSQL
# stopped for 10 s, the LocalStack process restarted once. Then it checks rows, duplicates,
# rejects and the queue, and prints one line ending in PASS or FAIL (exit code 0 or 1).
# The orchestration itself is scripts/fault_test.py (see there for how the LocalStack restart
# is handled: the community edition does not persist queues).
#
# Environment: FAULT_PGPORT (57532), FAULT_SQS_PORT (57666), FAULT_DIR (<project>/.local/fault),
#              ETL_VENV_DIR (where the LocalStack virtualenvs live; <project>/.local),
#              FAULT_PROFILE (release; "dev" uses the debug build, e.g. when the test suite has just
#              built it and a release build would take longer than the run),
#              FAULT_KEEP_SERVICES=1 leaves the services running afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

FAULT_PGPORT=${FAULT_PGPORT:-57532}
FAULT_SQS_PORT=${FAULT_SQS_PORT:-57666}
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
