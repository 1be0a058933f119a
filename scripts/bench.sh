#!/usr/bin/env bash
# Throughput benchmark: the engine against its two ceilings and against the usual Python script,
# on the same generated data, in one run.
#
#   scripts/bench.sh [--messages N] [--rss-messages M] [--reference-messages K] [--repeat R]
#                    [--large-body-messages G] [--latency-ms MS [--latency-messages L]]
#                    [--order-messages O]
#                    [--skip-reference] [--keep-services] [--only ROWS]
#
#   A  SQS ceiling: receive(10) + DeleteMessageBatch, no processing, 4 loops (or the spec's
#      fixed source.pollers)
#   B  etl-engine run specs/logins.yaml --drain: SQS -> hash + vault + casts -> Postgres
#   C  benches/reference/reference_etl.py: boto3, hashlib, one INSERT and one delete per message
#   D  Postgres ceiling: binary COPY of the final target, vault, ledger and reject rows
#   E  etl-engine run with a JSON Lines file source, same transforms
#   DO, EO  D and E for specs/orders.yaml (orders + order_items, both upsert with only_if_newer)
#      on O generated order messages (default N; with updates, late older versions and
#      returning customers; 0 skips them); DO loads the rows the tables end with
#   R  B again on a queue of M messages, for the peak-RSS check
#   RL B again on a queue of G messages (default 2,000; 0 skips it) whose bodies are padded to
#      255 KiB (an extra JSON string field no column reads), for the peak-RSS check of the byte
#      budget (source.max_in_flight_bytes, default settings). They are sent one per
#      SendMessageBatch: classic SQS allows 256 KiB per batch in all (LocalStack 4.13: 1 MiB).
#   BL, CL (with --latency-ms) B and C on L messages (default 5,000) through a proxy that delays
#      every byte by MS in each direction, as if the endpoint were remote (the proxy is the
#      etl_bench helper's async `latency-proxy`); BL runs the shipped spec as is (pollers: auto)
#   AL (with --latency-ms) A through the same proxy with 32 loops: what the endpoint serves at
#      that latency to enough concurrency, the yardstick for BL
#   --only ROWS runs and reports only the rows named, comma-separated (e.g. --only A,B,AL,BL;
#      D and E run together, as do DO and EO; large-bodies is RL; AL, BL, CL need --latency-ms).
#
# D, E, DO and EO take a second or two each, so one run is at the mercy of a checkpoint or autovacuum:
# they are measured R times (default 3), alternating, and the run with the median rate counts
# (every run is listed). Before each measurement the previous database is vacuumed and a
# checkpoint taken, so one measurement's aftermath does not land in the next.
#
# N defaults to 50,000 (about 1% invalid), M to 200,000, K to N. Prints a table and the ratios
# B/A, B/C, E/D, EO/DO, BL/AL, checks the targets (B >= 0.9 A, B >= 5 C, E >= 0.8 D, EO >= 0.7 DO, BL >= 0.8 AL, peak
# RSS of R <= 100 MB, peak RSS of RL <= 300 MB; E CPU us/msg informational), writes everything to $BENCH_DIR/results.json,
# and exits 1 if a measured target is missed.
#
# Services run on their own ports and state dir (BENCH_PGPORT=58432, BENCH_SQS_PORT=58566,
# BENCH_DIR=<project>/.local/bench) and are stopped at the end unless --keep-services.
# Other load on the machine skews every number: check `uptime` first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MESSAGES=50000
RSS_MESSAGES=200000
REFERENCE_MESSAGES=""
SKIP_REFERENCE=0
KEEP_SERVICES=0
LATENCY_MS=0
LATENCY_MESSAGES=5000
REPEAT=3
LARGE_BODY_MESSAGES=2000
# 255 KiB: just under SQS's 256 KiB (262,144 bytes) per message, with room for attributes.
LARGE_BODY_BYTES=261120
ONLY=""
ORDER_MESSAGES=""
usage() { sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --messages) MESSAGES=${2:?}; shift 2 ;;
        --rss-messages) RSS_MESSAGES=${2:?}; shift 2 ;;
        --reference-messages) REFERENCE_MESSAGES=${2:?}; shift 2 ;;
        --latency-ms) LATENCY_MS=${2:?}; shift 2 ;;
        --latency-messages) LATENCY_MESSAGES=${2:?}; shift 2 ;;
        --repeat) REPEAT=${2:?}; shift 2 ;;
        --large-body-messages) LARGE_BODY_MESSAGES=${2:?}; shift 2 ;;
        --only) ONLY=${2:?}; shift 2 ;;
        --order-messages) ORDER_MESSAGES=${2:?}; shift 2 ;;
        --skip-reference) SKIP_REFERENCE=1; shift ;;
        --keep-services) KEEP_SERVICES=1; shift ;;
        -h|--help) usage ;;
        *) echo "error: unknown argument $1" >&2; usage ;;
    esac
done
REFERENCE_MESSAGES=${REFERENCE_MESSAGES:-$MESSAGES}
ORDER_MESSAGES=${ORDER_MESSAGES:-$MESSAGES}
[[ $ORDER_MESSAGES =~ ^[0-9]+$ ]] || { echo "error: --order-messages must be a whole number" >&2; exit 2; }
[[ $LATENCY_MS =~ ^[0-9]+$ ]] || { echo "error: --latency-ms must be a whole number of milliseconds" >&2; exit 2; }
for n in "$MESSAGES" "$RSS_MESSAGES" "$REFERENCE_MESSAGES" "$LATENCY_MESSAGES" "$REPEAT"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "error: message counts must be positive integers (got $n)" >&2; exit 2; }
done
[[ $LARGE_BODY_MESSAGES =~ ^[0-9]+$ ]] || { echo "error: --large-body-messages must be a whole number" >&2; exit 2; }
ONLY=${ONLY//large-bodies/RL}
for row in ${ONLY//,/ }; do
    case $row in
        A|B|C|D|E|DO|EO|R|RL|AL|BL|CL) ;;
        *) echo "error: --only takes rows among A,B,C,D,E,DO,EO,R,RL,AL,BL,CL or large-bodies (got $row)" >&2; exit 2 ;;
    esac
done
# want ROW: whether ROW is measured (every row without --only).
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
if want RL; then :; else LARGE_BODY_MESSAGES=0; fi
if want DO || want EO; then :; else ORDER_MESSAGES=0; fi
want RL && [ -n "$ONLY" ] && [ "$LARGE_BODY_MESSAGES" = 0 ] && { echo "error: --only RL needs --large-body-messages > 0" >&2; exit 2; }
if [ -n "$ONLY" ] && ! want C && ! want CL; then SKIP_REFERENCE=1; fi
if { want AL || want BL || want CL; } && [ -n "$ONLY" ] && [ "$LATENCY_MS" = 0 ]; then
    echo "error: --only AL/BL/CL needs --latency-ms" >&2; exit 2
fi

BENCH_PGPORT=${BENCH_PGPORT:-58432}
BENCH_SQS_PORT=${BENCH_SQS_PORT:-58566}
BENCH_DIR=${BENCH_DIR:-"$ROOT/.local/bench"}
export ETL_VENV_DIR=${ETL_VENV_DIR:-"$ROOT/.local"}
REF_VENV="$ETL_VENV_DIR/venv-bench-reference"
OUT="$BENCH_DIR/run"
DATA="$BENCH_DIR/data"
ENDPOINT="http://127.0.0.1:$BENCH_SQS_PORT"
ADMIN_URL="postgres://postgres:postgres@127.0.0.1:$BENCH_PGPORT/postgres"
SPEC="$ROOT/specs/logins.yaml"
TABLE_DDL_FILE="$ROOT/schema/user_logins.sql"
ORDERS_SPEC="$ROOT/specs/orders.yaml"
ORDERS_DDL_FILE="$ROOT/schema/orders.sql"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

services() {
    ETL_LOCAL_DIR="$BENCH_DIR/services" PGPORT=$BENCH_PGPORT SQS_PORT=$BENCH_SQS_PORT QUEUES=bench-ready \
        bash "$ROOT/scripts/services.sh" "$@"
}
PROXY_PID=""
cleanup() {
    if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID" 2>/dev/null || true; fi
    if [ "$KEEP_SERVICES" = 0 ]; then services down >/dev/null 2>&1 || true; fi
}

# ------------------------------------------------------------------ prerequisites and build
if [ ! -x /usr/bin/time ]; then
    [ "$(id -u)" -eq 0 ] || die "/usr/bin/time is missing (it measures peak RSS): apt-get install time"
    say "installing GNU time (peak RSS)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q time; } >/dev/null 2>&1 || die "apt-get install time failed"
fi

say "building (release)"
build_release_binaries

if [ "$SKIP_REFERENCE" = 0 ]; then
    want=$(cksum <"$ROOT/benches/reference/requirements.txt" | cut -d' ' -f1)
    if [ "$(cat "$REF_VENV/.installed" 2>/dev/null)" != "$want" ]; then
        say "installing the Python reference's requirements into $REF_VENV"
        rm -rf "$REF_VENV"
        python3 -m venv "$REF_VENV"
        "$REF_VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/benches/reference/requirements.txt" ||
            die "pip install of benches/reference/requirements.txt failed"
        echo "$want" >"$REF_VENV/.installed"
    fi
fi

# ------------------------------------------------------------------ services and data
mkdir -p "$BENCH_DIR" "$DATA"
rm -rf "$OUT"
mkdir -p "$OUT"
trap cleanup EXIT
say "starting services (Postgres :$BENCH_PGPORT, LocalStack :$BENCH_SQS_PORT)"
services up >"$OUT/services.log" 2>&1 || { cat "$OUT/services.log" >&2; die "services did not start"; }

gen() { # count [kind] -> prints the file, writes its counts next to it
    local kind=${2:-logins}
    local f="$DATA/$kind-$1.jsonl"
    "$BENCH_BIN" gen --kind "$kind" --messages "$1" --out "$f" >"$f.counts"
    echo "$f"
}
count_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1.counts" "$2"; }
valid_of() { count_of "$1" valid; }
if want A || want B || want C || want D || want E; then
    say "generating $MESSAGES messages"
    MSGS=$(gen "$MESSAGES")
    REF_MSGS=$MSGS
    [ "$REFERENCE_MESSAGES" = "$MESSAGES" ] || ! want C || REF_MSGS=$(gen "$REFERENCE_MESSAGES")
fi
if want R; then
    say "generating $RSS_MESSAGES messages"
    RSS_MSGS=$(gen "$RSS_MESSAGES")
fi
if [ "$ORDER_MESSAGES" != 0 ]; then
    say "generating $ORDER_MESSAGES order messages"
    ORDER_MSGS=$(gen "$ORDER_MESSAGES" orders)
fi
# RL's messages are these, padded by the loader as they are sent (500 MB never touch the disk).
[ "$LARGE_BODY_MESSAGES" = 0 ] || LARGE_MSGS=$(gen "$LARGE_BODY_MESSAGES")

export ETL_KEYRING="$BENCH_DIR/keyring.json"
"$ENGINE" keygen --force "$ETL_KEYRING" >/dev/null
# The file-source specs: the shipped specs with their source block replaced, everything else as is.
FILE_SPEC="$BENCH_DIR/logins-file.yaml"
file_spec "$SPEC" "${MSGS:-}" "$FILE_SPEC"
ORDERS_FILE_SPEC="$BENCH_DIR/orders-file.yaml"
file_spec "$ORDERS_SPEC" "${ORDER_MSGS:-}" "$ORDERS_FILE_SPEC"

{
    printf '{"messages": %s, "rss_messages": %s, "reference_messages": %s,\n' "$MESSAGES" "$RSS_MESSAGES" "$REFERENCE_MESSAGES"
    printf ' "latency_ms_each_way": %s, "latency_messages": %s,\n' "$LATENCY_MS" "$LATENCY_MESSAGES"
    printf ' "order_messages": %s,\n' "$ORDER_MESSAGES"
    printf ' "large_body_messages": %s, "large_body_bytes": %s, "only": %s,\n' "$LARGE_BODY_MESSAGES" "$LARGE_BODY_BYTES" \
        "$([ -n "$ONLY" ] && printf '"%s"' "$ONLY" || echo null)"
    printf ' "valid": %s, "started_at": "%s", "git_commit": "%s",\n' "$([ -n "${MSGS:-}" ] && valid_of "$MSGS" || echo null)" "$(date -u +%FT%TZ)" \
        "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf ' "machine": {"cpu_model": "%s", "cores": %s, "mem_total_mb": %s},\n' \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(nproc)" \
        "$(awk '/MemTotal/ { printf "%d", $2 / 1024 }' /proc/meminfo)"
    printf ' "load_average_at_start": "%s"}\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/meta.json"

# Per measurement: a fresh database, and a fresh queue holding exactly the input.
fresh_db() { # name [ddl spec] -> url of a new database with the target tables and the engine's tables set up
    local url ddl=${2:-$TABLE_DDL_FILE} spec=${3:-$SPEC}
    url=$("$BENCH_BIN" reset-db --admin-url "$ADMIN_URL" --name "$1" --ddl "$ddl")
    ETL_SPEC_TARGET__URL="$url" "$ENGINE" setup "$spec" >/dev/null
    echo "$url"
}
fresh_queue() { # name file [load options...] -> url
    local name=$1 file=$2
    shift 2
    "$BENCH_BIN" load --endpoint "$ENDPOINT" --queue "$name-$$" --input "$file" "$@"
}
drop_queue() { "$BENCH_BIN" delete-queue --endpoint "$ENDPOINT" --queue-url "$1" || true; }
engine_env() { # queue-url db-url command...: runs the command with the spec pointed at them
    local q=$1 db=$2
    shift 2
    env ETL_SPEC_SOURCE__QUEUE="$q" ETL_SPEC_SOURCE__ENDPOINT_URL="$ENDPOINT" ${db:+ETL_SPEC_TARGET__URL="$db"} \
        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test RUST_LOG=warn "$@"
}

PSQL=$(command -v psql || echo /usr/lib/postgresql/15/bin/psql)
# Vacuums the database a measurement just wrote (if given) and takes a checkpoint, so neither
# autovacuum nor a checkpoint from this measurement runs during the next one.
settle() {
    if [ -n "${1:-}" ]; then "$PSQL" -X -q "$1" -c "VACUUM (ANALYZE)" >/dev/null; fi
    "$PSQL" -X -q "$ADMIN_URL" -c "CHECKPOINT" >/dev/null
}
# Copies the runs of a ceiling row and its engine row with the median rate to <d>.json and
# <e>-*.json (what the report reads) and lists every run in <d>-<e>-runs.json.
pick_median() { # repeat out d e
    python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, shutil, sys
n, out, d, e = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def rate(path):
    return json.load(open(path))["messages_per_sec"]
def engine_rate(path):
    # Messages (not rows: an orders message writes several) per second of the engine's run.
    s = json.load(open(path))
    return s["received"] / s["elapsed_secs"]
runs = {d: [rate(f"{out}/{d}-{i}.json") for i in range(1, n + 1)],
        e: [engine_rate(f"{out}/{e}-summary-{i}.json") for i in range(1, n + 1)]}
for key, files in ((d, [d]), (e, [f"{e}-measure", f"{e}-summary", f"{e}-check"])):
    order = sorted(range(n), key=lambda i: runs[key][i])
    median = order[n // 2] + 1
    runs[f"{key}_median_run"] = median
    for f in files:
        shutil.copy(f"{out}/{f}-{median}.json", f"{out}/{f}.json")
    if key == e:
        shutil.copy(f"{out}/{e}-{median}.log", f"{out}/{e}.log")
json.dump(runs, open(f"{out}/{d}-{e}-runs.json", "w"), indent=1)
for key in (d, e):
    print(f"==> {key.upper()} runs (msgs/s): " + ", ".join(f"{r:.0f}" for r in runs[key]) + f"; median: run {runs[key + '_median_run']}")
PY
}

say "load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg)"

if want D || want E; then
# ------------------------------------------------------------------ D and E (no SQS)
for i in $(seq 1 "$REPEAT"); do
    settle
    say "D: Postgres ceiling (binary COPY of the final rows), run $i of $REPEAT"
    DB=$(fresh_db bench_d)
    "$BENCH_BIN" pg-ceiling --spec "$SPEC" --input "$MSGS" --db "$DB" --out "$OUT/d-$i.json"
    settle "$DB"

    say "E: engine, file source -> Postgres, run $i of $REPEAT"
    DB=$(fresh_db bench_e)
    ETL_SPEC_TARGET__URL="$DB" RUST_LOG=warn "$BENCH_BIN" measure --out "$OUT/e-measure-$i.json" --log "$OUT/e-$i.log" -- \
        "$ENGINE" run "$FILE_SPEC" --summary-json "$OUT/e-summary-$i.json"
    "$BENCH_BIN" check-db --db "$DB" --target-table user_logins --expect-rows "$(valid_of "$MSGS")" \
        --expect-messages "$MESSAGES" --out "$OUT/e-check-$i.json"
    settle "$DB"
done
pick_median "$REPEAT" "$OUT" d e
fi

if [ "$ORDER_MESSAGES" != 0 ]; then
# ------------------------------------------------------------------ DO and EO (orders, no SQS)
for i in $(seq 1 "$REPEAT"); do
    settle
    say "DO: Postgres ceiling for orders (binary COPY of the final rows), run $i of $REPEAT"
    DB=$(fresh_db bench_do "$ORDERS_DDL_FILE" "$ORDERS_SPEC")
    "$BENCH_BIN" pg-ceiling --spec "$ORDERS_FILE_SPEC" --input "$ORDER_MSGS" --db "$DB" --out "$OUT/do-$i.json"
    settle "$DB"

    say "EO: engine, orders file -> Postgres, run $i of $REPEAT"
    DB=$(fresh_db bench_eo "$ORDERS_DDL_FILE" "$ORDERS_SPEC")
    ETL_SPEC_TARGET__URL="$DB" RUST_LOG=warn "$BENCH_BIN" measure --out "$OUT/eo-measure-$i.json" --log "$OUT/eo-$i.log" -- \
        "$ENGINE" run "$ORDERS_FILE_SPEC" --summary-json "$OUT/eo-summary-$i.json"
    "$BENCH_BIN" check-db --db "$DB" --target-table orders --expect-rows "$(count_of "$ORDER_MSGS" orders)" \
        --expect-messages "$ORDER_MESSAGES" --expect-rejects "$(count_of "$ORDER_MSGS" invalid)" --out "$OUT/eo-check-$i.json"
    "$BENCH_BIN" check-db --db "$DB" --target-table order_items --expect-rows "$(count_of "$ORDER_MSGS" items)" \
        --out "$OUT/eo-items-check-$i.json"
    settle "$DB"
done
pick_median "$REPEAT" "$OUT" do eo
fi

# ------------------------------------------------------------------ A, B, C (SQS)
if want A; then
settle
say "A: SQS ceiling (receive + delete-batch, no processing)"
Q=$(fresh_queue bench-a "$MSGS")
engine_env "$Q" "" "$BENCH_BIN" measure --out "$OUT/a-measure.json" --log "$OUT/a.log" --endpoint "$ENDPOINT" --queue-url "$Q" -- \
    "$BENCH_BIN" sqs-ceiling --spec "$SPEC" --endpoint "$ENDPOINT" --queue-url "$Q" --expect "$MESSAGES" --out "$OUT/a.json"
drop_queue "$Q"
fi

if want B; then
settle
say "B: engine, SQS -> Postgres (--drain)"
DB=$(fresh_db bench_b)
Q=$(fresh_queue bench-b "$MSGS")
engine_env "$Q" "$DB" "$BENCH_BIN" measure --out "$OUT/b-measure.json" --log "$OUT/b.log" --endpoint "$ENDPOINT" --queue-url "$Q" -- \
    "$ENGINE" run "$SPEC" --drain --summary-json "$OUT/b-summary.json"
drop_queue "$Q"
"$BENCH_BIN" check-db --db "$DB" --target-table user_logins --expect-rows "$(valid_of "$MSGS")" \
    --expect-messages "$MESSAGES" --out "$OUT/b-check.json"
fi

if want C && [ "$SKIP_REFERENCE" = 0 ]; then
    settle
    say "C: Python reference ($REFERENCE_MESSAGES messages; one INSERT and one delete per message)"
    DB=$(fresh_db bench_c)
    Q=$(fresh_queue bench-c "$REF_MSGS")
    "$BENCH_BIN" measure --out "$OUT/c-measure.json" --log "$OUT/c.log" --endpoint "$ENDPOINT" --queue-url "$Q" -- \
        "$REF_VENV/bin/python" "$ROOT/benches/reference/reference_etl.py" --endpoint "$ENDPOINT" --queue-url "$Q" --db "$DB"
    drop_queue "$Q"
    "$BENCH_BIN" check-db --db "$DB" --target-table user_logins --expect-rows "$(valid_of "$REF_MSGS")" --out "$OUT/c-check.json"
fi

if want R; then
settle
say "R: engine draining $RSS_MESSAGES messages (peak RSS)"
DB=$(fresh_db bench_r)
Q=$(fresh_queue bench-r "$RSS_MSGS")
engine_env "$Q" "$DB" "$BENCH_BIN" measure --out "$OUT/r-measure.json" --log "$OUT/r.log" --endpoint "$ENDPOINT" --queue-url "$Q" -- \
    "$ENGINE" run "$SPEC" --drain --summary-json "$OUT/r-summary.json"
drop_queue "$Q"
"$BENCH_BIN" check-db --db "$DB" --target-table user_logins --expect-rows "$(valid_of "$RSS_MSGS")" \
    --expect-messages "$RSS_MESSAGES" --out "$OUT/r-check.json"
settle "$DB"
fi

if [ "$LARGE_BODY_MESSAGES" != 0 ]; then
    say "RL: loading $LARGE_BODY_MESSAGES messages of $LARGE_BODY_BYTES bytes (one per send batch)"
    DB=$(fresh_db bench_rl)
    Q=$(fresh_queue bench-rl "$LARGE_MSGS" --pad-to "$LARGE_BODY_BYTES")
    settle
    say "RL: engine draining $LARGE_BODY_MESSAGES messages of $LARGE_BODY_BYTES bytes (peak RSS, default settings)"
    engine_env "$Q" "$DB" "$BENCH_BIN" measure --out "$OUT/rl-measure.json" --log "$OUT/rl.log" --endpoint "$ENDPOINT" --queue-url "$Q" -- \
        "$ENGINE" run "$SPEC" --drain --summary-json "$OUT/rl-summary.json"
    drop_queue "$Q"
    "$BENCH_BIN" check-db --db "$DB" --target-table user_logins --expect-rows "$(valid_of "$LARGE_MSGS")" \
        --expect-messages "$LARGE_BODY_MESSAGES" --out "$OUT/rl-check.json"
    settle "$DB"
fi

if [ "$LATENCY_MS" != 0 ] && { want AL || want BL || want CL; }; then
    say "AL, BL, CL: $LATENCY_MESSAGES messages through a proxy adding $LATENCY_MS ms each way"
    LAT_MSGS=$(gen "$LATENCY_MESSAGES")
    "$BENCH_BIN" latency-proxy --target-port "$BENCH_SQS_PORT" --delay-ms "$LATENCY_MS" >"$OUT/proxy.port" 2>"$OUT/proxy.log" &
    PROXY_PID=$!
    for _ in $(seq 1 50); do [ -s "$OUT/proxy.port" ] && break; sleep 0.1; done
    [ -s "$OUT/proxy.port" ] || die "the latency proxy did not start (see $OUT/proxy.log)"
    SLOW="http://127.0.0.1:$(head -1 "$OUT/proxy.port")"
    if want AL; then
        settle
        say "AL: SQS ceiling through the proxy, 32 loops"
        Q=$(fresh_queue bench-al "$LAT_MSGS")
        "$BENCH_BIN" measure --out "$OUT/al-measure.json" --log "$OUT/al.log" --endpoint "$ENDPOINT" --queue-url "$Q" -- \
            env AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
            "$BENCH_BIN" sqs-ceiling --spec "$SPEC" --workers 32 --endpoint "$SLOW" --queue-url "$Q" --expect "$LATENCY_MESSAGES" --out "$OUT/al.json"
        drop_queue "$Q"
    fi
    if want BL; then
    settle
    say "BL: engine through the proxy (the spec as shipped: pollers auto)"
    DB=$(fresh_db bench_bl)
    Q=$(fresh_queue bench-bl "$LAT_MSGS")
    engine_env "$Q" "$DB" env ETL_SPEC_SOURCE__ENDPOINT_URL="$SLOW" \
        "$BENCH_BIN" measure --out "$OUT/bl-measure.json" --log "$OUT/bl.log" --endpoint "$ENDPOINT" --queue-url "$Q" -- \
        "$ENGINE" run "$SPEC" --drain --summary-json "$OUT/bl-summary.json"
    drop_queue "$Q"
    "$BENCH_BIN" check-db --db "$DB" --target-table user_logins --expect-rows "$(valid_of "$LAT_MSGS")" \
        --expect-messages "$LATENCY_MESSAGES" --out "$OUT/bl-check.json"
    fi
    if want CL && [ "$SKIP_REFERENCE" = 0 ]; then
        DB=$(fresh_db bench_cl)
        Q=$(fresh_queue bench-cl "$LAT_MSGS")
        "$BENCH_BIN" measure --out "$OUT/cl-measure.json" --log "$OUT/cl.log" --endpoint "$ENDPOINT" --queue-url "$Q" -- \
            "$REF_VENV/bin/python" "$ROOT/benches/reference/reference_etl.py" --endpoint "$SLOW" --queue-url "$Q" --db "$DB"
        drop_queue "$Q"
        "$BENCH_BIN" check-db --db "$DB" --target-table user_logins --expect-rows "$(valid_of "$LAT_MSGS")" --out "$OUT/cl-check.json"
    fi
    kill "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
fi

say "load average after measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
"$BENCH_BIN" report --dir "$OUT" || status=$?
# Every D, E, DO and EO run, not only the median ones, go into the results too.
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(f"{out}/results.json"))
for name in ("d-e", "do-eo"):
    path = f"{out}/{name}-runs.json"
    if os.path.exists(path):
        r[name.replace("-", "_") + "_runs_msgs_per_sec"] = json.load(open(path))
json.dump(r, open(f"{out}/results.json", "w"), indent=1)
PY
cp "$OUT/results.json" "$BENCH_DIR/results.json"
exit $status
