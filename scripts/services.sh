#!/usr/bin/env bash
# Local development services for etl-engine, without Docker: PostgreSQL 15 and LocalStack SQS on loopback.
#
#   scripts/services.sh up [--legacy-sqs|--moto]   start (or reuse) both, create the queue(s), apply table DDL
#   scripts/services.sh down                       stop only what `up` started
#   scripts/services.sh status                     show what is running
#
# Environment: PGPORT (5432), SQS_PORT (4566), ETL_LOCAL_DIR (<project>/.local), QUEUES ("login-queue"),
#              TABLE_DDL (space-separated, relative to the project), READY_TIMEOUT (seconds, 90),
#              PYTHON (python3, used to create the LocalStack venvs), ETL_VENV_DIR (where the venvs live; ETL_LOCAL_DIR).
# --legacy-sqs runs localstack-core 2.3.2, which only speaks the SQS query protocol.
# --moto runs a moto server (moto[server] 5.2.5) on SQS_PORT instead of LocalStack: a third SQS
# implementation (both protocols) and the KMS endpoint (LocalStack's KMS fails on Python 3.11).
# moto scans the whole queue on every call: keep its queues to a few hundred messages.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Table DDL files applied on `up`, in order; missing files are skipped so more can be listed ahead of time.
TABLE_DDL=${TABLE_DDL:-"schema/user_logins.sql schema/purchases.sql schema/signups.sql schema/orders.sql schema/events.sql"}
QUEUES=${QUEUES:-"login-queue purchase-queue signup-queue order-queue event-queue"}
PGPORT=${PGPORT:-5432}
SQS_PORT=${SQS_PORT:-4566}
ETL_LOCAL_DIR=${ETL_LOCAL_DIR:-"$ROOT/.local"}
READY_TIMEOUT=${READY_TIMEOUT:-90}
PYTHON=${PYTHON:-python3}

CURRENT_VERSION="localstack-core==4.13.0"
LEGACY_VERSION="localstack-core==2.3.2"
MOTO_VERSION="moto[server]==5.2.5"
REQ_DIR="$ROOT/scripts/requirements"

L=$ETL_LOCAL_DIR
PG_DIR="$L/pg"                 # owned by the postgres user when running as root; also the socket dir
PG_DATA="$PG_DIR/data"
PG_LOG="$L/postgres.log"
LS_PID="$L/localstack.pid"
LS_FLAVOUR="$L/localstack.flavour"
LS_PORT_FILE="$L/localstack.port"
LS_LOG="$L/localstack.log"
MOTO_PID="$L/moto.pid"
MOTO_PORT_FILE="$L/moto.port"
MOTO_LOG="$L/moto.log"

export PGPASSWORD=${PGPASSWORD:-postgres}
unset PGHOST PGUSER PGDATABASE PGSERVICE || true

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
fail_with_log() { # message, log file
    printf 'error: %s (log: %s)\n' "$1" "$2" >&2
    if [ -f "$2" ]; then tail -n 20 "$2" | sed 's/^/    /' >&2; fi
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
is_root() { [ "$(id -u)" -eq 0 ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- PostgreSQL

PG_BIN=""
find_pg_bin() {
    if [ -x /usr/lib/postgresql/15/bin/initdb ]; then
        PG_BIN=/usr/lib/postgresql/15/bin
    else
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    fi
}

ensure_pg_installed() {
    find_pg_bin
    if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
        is_root || die "PostgreSQL server binaries not found; install postgresql-15 (apt-get install postgresql-15)"
        say "installing PostgreSQL (apt-get, log: $L/apt.log)"
        {
            apt-get update -q &&
            { DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 ||
              DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }
        } >"$L/apt.log" 2>&1 || fail_with_log "apt-get install postgresql failed" "$L/apt.log"
        find_pg_bin
        [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || die "PostgreSQL installed but no initdb found under /usr/lib/postgresql"
    fi
}

# Run a server command as the postgres user when we are root (the server refuses to run as root).
as_pg() {
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_ready() { "${PG_BIN:-/usr/bin}/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -t 2 >/dev/null 2>&1; }
# True when the server of our data dir is running (as recorded in its postmaster.pid).
pg_ours_running() {
    [ -f "$PG_DATA/postmaster.pid" ] && [ -n "$PG_BIN" ] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}
pg_ours_port() { sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

psql_do() { PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres "$@"; }

pg_init() {
    mkdir -p "$PG_DIR"
    if is_root; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' system user; install postgresql-15 or run as a non-root user"
        chown postgres "$PG_DIR"
        chmod 700 "$PG_DIR"
        chmod a+x "$L"
        runuser -u postgres -- test -w "$PG_DIR" ||
            die "the postgres user cannot write $PG_DIR (a parent directory is not searchable); choose another ETL_LOCAL_DIR"
    fi
    [ -f "$PG_DATA/PG_VERSION" ] && return 0
    say "postgres: initdb in $PG_DATA"
    # Trust auth on loopback: for local development only, never for a shared or production server.
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C >"$L/initdb.log" 2>&1 ||
        fail_with_log "initdb failed" "$L/initdb.log"
}

pg_up() {
    if pg_ours_running; then
        if [ "$(pg_ours_port)" = "$PGPORT" ] && pg_ready; then
            say "postgres: already running (ours) on 127.0.0.1:$PGPORT"
            return 0
        fi
        say "postgres: ours is running on port $(pg_ours_port), restarting on $PGPORT"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
    fi
    if pg_ready; then
        say "postgres: reusing the server already answering on 127.0.0.1:$PGPORT (not started by this script)"
        return 0
    fi
    port_open "$PGPORT" && die "port $PGPORT is in use by something that is not a ready PostgreSQL; set PGPORT"
    pg_init
    say "postgres: starting on 127.0.0.1:$PGPORT"
    local t0; t0=$(now)
    : >>"$PG_LOG"
    is_root && chown postgres "$PG_LOG"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$READY_TIMEOUT" \
        -o "-p $PGPORT -k $PG_DIR -c listen_addresses=127.0.0.1" start >/dev/null 2>&1 ||
        { pg_stop_quietly; fail_with_log "PostgreSQL did not start on 127.0.0.1:$PGPORT" "$PG_LOG"; }
    local deadline=$((SECONDS + READY_TIMEOUT))
    until pg_ready; do
        if [ $SECONDS -ge $deadline ]; then
            pg_stop_quietly
            fail_with_log "PostgreSQL not ready on 127.0.0.1:$PGPORT after ${READY_TIMEOUT}s" "$PG_LOG"
        fi
        sleep 0.3
    done
    say "postgres: ready in $(since "$t0") s"
}

pg_setup() {
    psql_do -c "alter user postgres password 'postgres'" >/dev/null 2>&1 ||
        die "cannot log in to PostgreSQL on 127.0.0.1:$PGPORT as postgres (password 'postgres')"
    local f
    for f in $TABLE_DDL; do
        if [ ! -f "$ROOT/$f" ]; then
            say "postgres: $f not found, skipped"
            continue
        fi
        psql_do -f "$ROOT/$f" >/dev/null || die "applying $f failed"
        say "postgres: applied $f"
    done
}

# Stop the server of our data dir, e.g. one left half-started by a failed `up`.
pg_stop_quietly() {
    [ -f "$PG_DATA/postmaster.pid" ] || sleep 1
    [ -f "$PG_DATA/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
}

pg_down() {
    find_pg_bin
    if pg_ours_running; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
        say "postgres: stopped"
    elif [ -f "$PG_DATA/postmaster.pid" ] && [ -n "$PG_BIN" ]; then
        pg_stop_quietly
    else
        say "postgres: not running from $PG_DATA, nothing to stop"
    fi
}

# ---------------------------------------------------------------- LocalStack SQS

# Virtual environments can be shared between state dirs (tests run isolated services from one install).
VENV_DIR=${ETL_VENV_DIR:-$L}
venv_dir() {
    case $1 in
        legacy) echo "$VENV_DIR/venv-localstack-legacy" ;;
        moto) echo "$VENV_DIR/venv-moto" ;;
        *) echo "$VENV_DIR/venv-localstack" ;;
    esac
}
version_of() {
    case $1 in
        legacy) echo "$LEGACY_VERSION" ;;
        moto) echo "$MOTO_VERSION" ;;
        *) echo "$CURRENT_VERSION" ;;
    esac
}
req_base() {
    case $1 in
        legacy) echo "$REQ_DIR/localstack-legacy" ;;
        moto) echo "$REQ_DIR/moto" ;;
        *) echo "$REQ_DIR/localstack-current" ;;
    esac
}

ensure_venv() { # flavour
    local flavour=$1 venv marker want base
    venv=$(venv_dir "$flavour")
    base=$(req_base "$flavour")
    marker="$venv/.etl-engine-installed"
    want="$(version_of "$flavour") $(cat "$base.txt" "$base-constraints.txt" | cksum | cut -d' ' -f1)"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && "$venv/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    local log="$L/pip-$flavour.log" t0
    t0=$(now)
    say "sqs: installing $(version_of "$flavour") into $venv (log: $log)"
    if ! "$venv/bin/python" -c '' 2>/dev/null; then
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv" >"$log" 2>&1 || fail_with_log "cannot create a venv with $PYTHON (python3-venv missing?)" "$log"
    fi
    "$venv/bin/pip" install --disable-pip-version-check -c "$base-constraints.txt" -r "$base.txt" >>"$log" 2>&1 ||
        fail_with_log "pip install of $(version_of "$flavour") failed" "$log"
    echo "$want" >"$marker"
    say "sqs: installed in $(since "$t0") s"
}

ls_health_body() {
    local url="http://127.0.0.1:$SQS_PORT/_localstack/health"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 "$url" 2>/dev/null
    else
        "$PYTHON" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$url" 2>/dev/null
    fi
}
# 0 when the port serves a LocalStack health endpoint that lists sqs.
ls_healthy() {
    local body
    body=$(ls_health_body) && [[ $body == *'"sqs"'* ]]
}
ls_version() {
    local body
    body=$(ls_health_body) || return 0
    sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' <<<"$body"
}
# PID of the LocalStack we started, if it is still alive.
ls_ours_pid() {
    [ -f "$LS_PID" ] || return 1
    local pid; pid=$(cat "$LS_PID")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *localstack.runtime.main* ]] || return 1
    echo "$pid"
}

ls_stop_ours() {
    local pid
    if pid=$(ls_ours_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        say "sqs: stopped $(cat "$LS_FLAVOUR" 2>/dev/null || echo localstack) (pid $pid)"
    else
        say "sqs: no LocalStack started by this script is running, nothing to stop"
    fi
    rm -f "$LS_PID" "$LS_FLAVOUR" "$LS_PORT_FILE"
}

ls_up() { # flavour
    local flavour=$1 pid
    if pid=$(ls_ours_pid); then
        if [ "$(cat "$LS_FLAVOUR" 2>/dev/null)" = "$flavour" ] && [ "$(cat "$LS_PORT_FILE" 2>/dev/null)" = "$SQS_PORT" ] && ls_healthy; then
            say "sqs: already running (ours, $flavour, pid $pid) on 127.0.0.1:$SQS_PORT"
            ensure_venv "$flavour"
            return 0
        fi
        say "sqs: switching from $(cat "$LS_FLAVOUR" 2>/dev/null) on port $(cat "$LS_PORT_FILE" 2>/dev/null) to $flavour on $SQS_PORT"
        ls_stop_ours
    else
        rm -f "$LS_PID" "$LS_FLAVOUR" "$LS_PORT_FILE"
    fi
    if ! ls_healthy && port_open "$SQS_PORT"; then
        die "port $SQS_PORT is in use by something that is not LocalStack; set SQS_PORT"
    fi
    ensure_venv "$flavour"
    if ls_healthy; then
        say "sqs: reusing the LocalStack $(ls_version) already answering on 127.0.0.1:$SQS_PORT (not started by this script)"
        return 0
    fi

    local venv; venv=$(venv_dir "$flavour")
    local -a envs=(SERVICES=sqs "GATEWAY_LISTEN=127.0.0.1:$SQS_PORT" DNS_ADDRESS=0
                   DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 "FILESYSTEM_ROOT=$L/localstack-fs")
    if [ "$flavour" = legacy ]; then
        envs+=(SQS_DISABLE_CLOUDWATCH_METRICS=1)
    else
        envs+=("LOCALSTACK_HOST=127.0.0.1:$SQS_PORT" SQS_ENDPOINT_STRATEGY=path)
    fi
    mkdir -p "$L/localstack-fs"
    say "sqs: starting $(version_of "$flavour") on 127.0.0.1:$SQS_PORT"
    local t0; t0=$(now)
    : >"$LS_LOG"
    # setsid gives it its own session (no hang-up when the terminal closes); $! is the server's own PID.
    setsid env "${envs[@]}" "$venv/bin/python" -m localstack.runtime.main </dev/null >>"$LS_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$LS_PID"
    echo "$flavour" >"$LS_FLAVOUR"
    echo "$SQS_PORT" >"$LS_PORT_FILE"
    local deadline=$((SECONDS + READY_TIMEOUT))
    until ls_healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$LS_PID" "$LS_FLAVOUR" "$LS_PORT_FILE"
            fail_with_log "LocalStack exited during start-up" "$LS_LOG"
        fi
        if [ $SECONDS -ge $deadline ]; then
            ls_stop_ours >/dev/null
            fail_with_log "LocalStack not ready on 127.0.0.1:$SQS_PORT after ${READY_TIMEOUT}s" "$LS_LOG"
        fi
        sleep 0.3
    done
    say "sqs: ready in $(since "$t0") s (pid $pid)"
}

# ---------------------------------------------------------------- moto server (SQS + KMS)

# 0 when the port serves moto's own API (LocalStack has no /moto-api/ route on its gateway).
moto_healthy() {
    local url="http://127.0.0.1:$SQS_PORT/moto-api/data.json"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 -o /dev/null "$url" 2>/dev/null
    else
        "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url" 2>/dev/null
    fi
}
# PID of the moto server we started, if it is still alive (and still moto: PIDs get reused).
moto_ours_pid() {
    [ -f "$MOTO_PID" ] || return 1
    local pid; pid=$(cat "$MOTO_PID")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *moto_server* ]] || return 1
    echo "$pid"
}

moto_stop_ours() {
    local pid
    if pid=$(moto_ours_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        say "moto: stopped (pid $pid)"
    else
        say "moto: no moto server started by this script is running, nothing to stop"
    fi
    rm -f "$MOTO_PID" "$MOTO_PORT_FILE"
}

moto_up() {
    local pid
    if pid=$(moto_ours_pid); then
        if [ "$(cat "$MOTO_PORT_FILE" 2>/dev/null)" = "$SQS_PORT" ] && moto_healthy; then
            say "moto: already running (ours, pid $pid) on 127.0.0.1:$SQS_PORT"
            ensure_venv moto
            return 0
        fi
        say "moto: ours is on port $(cat "$MOTO_PORT_FILE" 2>/dev/null), restarting on $SQS_PORT"
        moto_stop_ours
    else
        rm -f "$MOTO_PID" "$MOTO_PORT_FILE"
    fi
    ensure_venv moto
    if moto_healthy; then
        say "moto: reusing the moto server already answering on 127.0.0.1:$SQS_PORT (not started by this script)"
        return 0
    fi
    port_open "$SQS_PORT" && die "port $SQS_PORT is in use by something that is not a moto server; set SQS_PORT"
    local venv; venv=$(venv_dir moto)
    say "moto: starting $MOTO_VERSION on 127.0.0.1:$SQS_PORT"
    local t0; t0=$(now)
    : >"$MOTO_LOG"
    # As for LocalStack: its own session, and $! is the server's own PID (setsid execs it).
    setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$SQS_PORT" </dev/null >>"$MOTO_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$MOTO_PID"
    echo "$SQS_PORT" >"$MOTO_PORT_FILE"
    local deadline=$((SECONDS + READY_TIMEOUT))
    until moto_healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$MOTO_PID" "$MOTO_PORT_FILE"
            fail_with_log "moto exited during start-up" "$MOTO_LOG"
        fi
        if [ $SECONDS -ge $deadline ]; then
            moto_stop_ours >/dev/null
            fail_with_log "moto not ready on 127.0.0.1:$SQS_PORT after ${READY_TIMEOUT}s" "$MOTO_LOG"
        fi
        sleep 0.3
    done
    say "moto: ready in $(since "$t0") s (pid $pid; SQS and KMS on http://127.0.0.1:$SQS_PORT)"
}

QUEUE_URLS=""
create_queues() { # flavour
    local py; py="$(venv_dir "$1")/bin/python"
    local i
    for i in 1 2 3 4 5; do
        if QUEUE_URLS=$("$py" - "http://127.0.0.1:$SQS_PORT" $QUEUES 2>>"$L/create-queue.log" <<'EOF'
import sys
import boto3

endpoint, names = sys.argv[1], sys.argv[2:]
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
for name in names:
    print(sqs.create_queue(QueueName=name)["QueueUrl"])
EOF
        ); then
            return 0
        fi
        sleep 1
    done
    fail_with_log "could not create SQS queue(s) $QUEUES on http://127.0.0.1:$SQS_PORT" "$L/create-queue.log"
}

# ---------------------------------------------------------------- commands

cmd_up() {
    local flavour=$1
    mkdir -p "$L"
    local t0; t0=$(now)
    ensure_pg_installed
    pg_up
    pg_setup
    if [ "$flavour" = moto ]; then moto_up; else ls_up "$flavour"; fi
    create_queues "$flavour"
    local q
    for q in $QUEUE_URLS; do say "sqs: queue $q"; done
    say "up in $(since "$t0") s"
    echo "DATABASE_URL=postgres://postgres:postgres@127.0.0.1:$PGPORT/postgres"
    echo "SQS_ENDPOINT=http://127.0.0.1:$SQS_PORT  (region us-east-1, credentials test/test)"
}

cmd_down() {
    ls_stop_ours
    if [ -f "$MOTO_PID" ]; then moto_stop_ours; fi
    pg_down
}

cmd_status() {
    find_pg_bin
    local pid
    if pg_ours_running; then
        echo "postgres: running (ours, pid $(head -1 "$PG_DATA/postmaster.pid"), data $PG_DATA) on 127.0.0.1:$(pg_ours_port)"
    elif pg_ready; then
        echo "postgres: answering on 127.0.0.1:$PGPORT (not started by this script)"
    else
        echo "postgres: not running"
    fi
    if pid=$(ls_ours_pid); then
        local flavour; flavour=$(cat "$LS_FLAVOUR" 2>/dev/null || echo unknown)
        local port; port=$(cat "$LS_PORT_FILE" 2>/dev/null || echo "$SQS_PORT")
        local health=ready
        SQS_PORT=$port ls_healthy || health="not answering"
        echo "sqs: running (ours, $flavour: $(version_of "$flavour"), pid $pid, $health) on http://127.0.0.1:$port"
    elif ls_healthy; then
        echo "sqs: LocalStack $(ls_version) answering on http://127.0.0.1:$SQS_PORT (not started by this script)"
    elif ! moto_ours_pid >/dev/null; then
        echo "sqs: not running"
    fi
    if pid=$(moto_ours_pid); then
        echo "moto: running (ours, $MOTO_VERSION, pid $pid) on http://127.0.0.1:$(cat "$MOTO_PORT_FILE" 2>/dev/null || echo "$SQS_PORT")"
    fi
}

usage() { echo "usage: $0 up|down|status [--legacy-sqs|--moto]" >&2; exit 2; }

[ $# -ge 1 ] || usage
CMD=$1; shift
FLAVOUR=current
for arg in "$@"; do
    case $arg in
        --legacy-sqs) FLAVOUR=legacy ;;
        --moto) FLAVOUR=moto ;;
        *) usage ;;
    esac
done
case $CMD in
    up) cmd_up "$FLAVOUR" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) usage ;;
esac
