#!/usr/bin/env bash
# Soak run: is the engine's memory flat under continuous work?
#
#   scripts/soak.sh [--minutes M (30)] [--rate R (500 msgs/s)]
#
# Builds the release binary, starts its own PostgreSQL and LocalStack (scripts/services.sh, on
# free ports, state under SOAK_DIR), and runs `etl-engine run specs/logins.yaml` (the shipped
# spec, pointed at a fresh queue and database through ETL_SPEC_* variables) for M minutes while a
# steady producer (scripts/soak_producer.py) sends R login messages per second. The engine's RSS
# is sampled every minute. At the end the producer stops, the engine drains what is left and is
# stopped with SIGTERM; rows must equal messages sent. Prints the samples and one line ending in
# PASS when the last sample is at most the 5-minute sample + 10% (runs shorter than 6 minutes
# compare with the 1-minute sample) and no row is missing or duplicated; exit code 0 or 1.
#
# Environment: SOAK_DIR (<project>/.local/soak), SOAK_PROFILE (release; "dev" uses the debug
#              build), ETL_VENV_DIR (LocalStack virtualenvs; <project>/.local),
#              SOAK_KEEP_SERVICES=1 leaves the services running afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MINUTES=30
RATE=500
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) MINUTES=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: $0 [--minutes M] [--rate R]" >&2; exit 2 ;;
    esac
done
[[ $MINUTES =~ ^[1-9][0-9]*$ ]] || { echo "error: --minutes must be a whole number >= 1" >&2; exit 2; }
[[ $RATE =~ ^[1-9][0-9]*$ ]] || { echo "error: --rate must be a whole number >= 1" >&2; exit 2; }

SOAK_DIR=${SOAK_DIR:-"$ROOT/.local/soak"}
export ETL_VENV_DIR=${ETL_VENV_DIR:-"$ROOT/.local"}
PY="$ETL_VENV_DIR/venv-localstack/bin/python"
say() { printf '==> soak: %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port)
SQS_PORT=$(free_port)

SOAK_PROFILE=${SOAK_PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-"$ROOT/target"}
case $SOAK_PROFILE in
    release) BIN="$TARGET_DIR/release/etl-engine"; BUILD=(--release) ;;
    dev|debug) BIN="$TARGET_DIR/debug/etl-engine"; BUILD=() ;;
    *) echo "error: SOAK_PROFILE must be release or dev, not $SOAK_PROFILE" >&2; exit 2 ;;
esac
say "building the $SOAK_PROFILE binary"
cargo build "${BUILD[@]}" --quiet --bin etl-engine

services() { ETL_LOCAL_DIR="$SOAK_DIR" PGPORT=$PGPORT SQS_PORT=$SQS_PORT bash scripts/services.sh "$@"; }
ENGINE_PID="" PRODUCER_PID=""
cleanup() {
    [ -n "$PRODUCER_PID" ] && kill -TERM "$PRODUCER_PID" 2>/dev/null || true
    [ -n "$ENGINE_PID" ] && kill -KILL "$ENGINE_PID" 2>/dev/null || true
    if [ "${SOAK_KEEP_SERVICES:-0}" != 1 ]; then services down >/dev/null 2>&1 || true; fi
}
mkdir -p "$SOAK_DIR"
trap cleanup EXIT
say "starting PostgreSQL on $PGPORT and LocalStack on $SQS_PORT (state: $SOAK_DIR)"
services up >"$SOAK_DIR/services-up.log" 2>&1 || { cat "$SOAK_DIR/services-up.log" >&2; exit 1; }

PSQL=(/usr/lib/postgresql/15/bin/psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres)
export PGPASSWORD=postgres
STAMP=$(date +%Y%m%d%H%M%S)
DB="soak_$STAMP"
QUEUE="soak-$STAMP"
RUN="$SOAK_DIR/run-$STAMP"
mkdir -p "$RUN"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB"
"${PSQL[@]}" -d "$DB" -f schema/user_logins.sql
QUEUE_URL=$("$PY" -c 'import sys, boto3
c = boto3.client("sqs", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
print(c.create_queue(QueueName=sys.argv[2])["QueueUrl"])' "http://127.0.0.1:$SQS_PORT" "$QUEUE")
"$BIN" keygen "$RUN/keyring.json" >/dev/null
# The engine's own tables: the explicit, owner-run step (`run` only checks their version).
ETL_SPEC_TARGET__URL="postgres://postgres:postgres@127.0.0.1:$PGPORT/$DB" "$BIN" setup specs/logins.yaml >/dev/null

queue_depth() {
    "$PY" -c 'import sys, boto3
c = boto3.client("sqs", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
a = c.get_queue_attributes(QueueUrl=sys.argv[2], AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
print(int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"]))' "http://127.0.0.1:$SQS_PORT" "$QUEUE_URL"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rows() { "${PSQL[@]}" -d "$DB" -c "SELECT count(*) FROM user_logins"; }

say "engine: run specs/logins.yaml on queue $QUEUE; producer: $RATE msgs/s for $MINUTES min (logs: $RUN)"
ETL_KEYRING="$RUN/keyring.json" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test RUST_LOG=${SOAK_RUST_LOG:-warn} \
    ETL_SPEC_SOURCE__QUEUE="$QUEUE" ETL_SPEC_SOURCE__ENDPOINT_URL="http://127.0.0.1:$SQS_PORT" \
    ETL_SPEC_SOURCE__WAIT_TIME_SECS=2 ETL_SPEC_TARGET__URL="postgres://postgres:postgres@127.0.0.1:$PGPORT/$DB" \
    "$BIN" run specs/logins.yaml </dev/null >"$RUN/engine.log" 2>&1 &
ENGINE_PID=$!
"$PY" scripts/soak_producer.py --endpoint "http://127.0.0.1:$SQS_PORT" --queue-url "$QUEUE_URL" \
    --rate "$RATE" --tag "soak$STAMP" --count-file "$RUN/sent" </dev/null >"$RUN/producer.log" 2>&1 &
PRODUCER_PID=$!

SAMPLES=()
t0=$SECONDS
for m in $(seq 1 "$MINUTES"); do
    while [ $((SECONDS - t0)) -lt $((m * 60)) ]; do
        if ! kill -0 "$ENGINE_PID" 2>/dev/null; then
            say "the engine exited during the soak (log: $RUN/engine.log)"
            tail -5 "$RUN/engine.log" >&2
            exit 1
        fi
        sleep 5
    done
    kib=$(rss_kib "$ENGINE_PID")
    SAMPLES+=("$kib")
    say "minute $m: engine RSS $((kib / 1024)) MiB, rows $(rows), queue $(queue_depth)"
done

kill -TERM "$PRODUCER_PID"
wait "$PRODUCER_PID" || true
PRODUCER_PID=""
SENT=$(cat "$RUN/sent")
say "producer stopped after $SENT messages; waiting for the queue to empty"
deadline=$((SECONDS + 120))
until [ "$(queue_depth)" = 0 ] && [ "$(rows)" -ge "$SENT" ]; do
    [ $SECONDS -ge $deadline ] && { say "queue not empty 120 s after the producer stopped"; break; }
    sleep 2
done
kill -TERM "$ENGINE_PID"
code=0
wait "$ENGINE_PID" || code=$?
ENGINE_PID=""
ROWS=$(rows)
DISTINCT=$("${PSQL[@]}" -d "$DB" -c "SELECT count(DISTINCT user_id) FROM user_logins")

base_minute=5
[ "$MINUTES" -lt 6 ] && base_minute=1
base=${SAMPLES[$((base_minute - 1))]}
last=${SAMPLES[$((MINUTES - 1))]}
limit=$((base + base / 10))
echo "minute  rss_mib"
for i in "${!SAMPLES[@]}"; do
    printf '%6d  %7.1f\n' $((i + 1)) "$(awk -v k="${SAMPLES[$i]}" 'BEGIN { print k / 1024 }')"
done
ok=1
[ "$last" -le "$limit" ] || ok=0
[ "$ROWS" = "$SENT" ] && [ "$DISTINCT" = "$SENT" ] || ok=0
[ "$code" = 0 ] || ok=0
result=FAIL
[ $ok = 1 ] && result=PASS
printf 'soak: minutes=%s rate=%s sent=%s rows=%s duplicates=%s rss_minute%s=%.1fMiB rss_last=%.1fMiB limit=%.1fMiB engine_exit=%s %s\n' \
    "$MINUTES" "$RATE" "$SENT" "$ROWS" $((ROWS - DISTINCT)) "$base_minute" \
    "$(awk -v k="$base" 'BEGIN { print k / 1024 }')" "$(awk -v k="$last" 'BEGIN { print k / 1024 }')" \
    "$(awk -v k="$limit" 'BEGIN { print k / 1024 }')" "$code" "$result"
[ $ok = 1 ] && "${PSQL[@]}" -d postgres -c "DROP DATABASE $DB" >/dev/null 2>&1
[ $ok = 1 ]
