#!/usr/bin/env bash
# Where the write path's time goes: runs the benchmark's E measurement once (the file source,
# specs/logins.yaml's transforms, or specs/orders.yaml's with --orders) against a throwaway
# PostgreSQL that logs every statement's duration, then prints Postgres's statement time by
# statement and the engine's own CPU time.
#
#   scripts/profile-writes.sh [--messages N] [--orders]
#
# N defaults to 50,000. Services run on their own ports and state dir (PROFILE_PGPORT=58433,
# PROFILE_SQS_PORT=58567, <project>/.local/profile) and are stopped at the end. The data is the
# benchmark's generator's (the same seed), so the numbers line up with E and EO of
# scripts/bench.sh. Statement logging itself costs a little; compare proportions, not totals.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MESSAGES=50000
KIND=logins
while [ $# -gt 0 ]; do
    case $1 in
        --messages) MESSAGES=${2:?}; shift 2 ;;
        --orders) KIND=orders; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
        *) echo "error: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $MESSAGES =~ ^[1-9][0-9]*$ ]] || { echo "error: --messages must be a positive integer" >&2; exit 2; }

PGPORT=${PROFILE_PGPORT:-58433}
SQS_PORT=${PROFILE_SQS_PORT:-58567}
DIR="$ROOT/.local/profile"
export ETL_VENV_DIR=${ETL_VENV_DIR:-"$ROOT/.local"}
say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
services() { ETL_LOCAL_DIR="$DIR/services" PGPORT=$PGPORT SQS_PORT=$SQS_PORT QUEUES=profile-ready bash "$ROOT/scripts/services.sh" "$@"; }
trap 'services down >/dev/null 2>&1 || true' EXIT

say "building (release)"
build_release_binaries
mkdir -p "$DIR"
say "starting services (Postgres :$PGPORT)"
services up >"$DIR/services.log" 2>&1 || { cat "$DIR/services.log" >&2; exit 1; }

if [ "$KIND" = orders ]; then SPEC=specs/orders.yaml; DDL=schema/orders.sql; else SPEC=specs/logins.yaml; DDL=schema/user_logins.sql; fi
MSGS="$DIR/$KIND-$MESSAGES.jsonl"
"$BENCH_BIN" gen --kind "$KIND" --messages "$MESSAGES" --out "$MSGS" >/dev/null
FILE_SPEC="$DIR/$KIND-file.yaml"
file_spec "$SPEC" "$MSGS" "$FILE_SPEC"
export ETL_KEYRING="$DIR/keyring.json"
"$ENGINE" keygen --force "$ETL_KEYRING" >/dev/null
ADMIN="postgres://postgres:postgres@127.0.0.1:$PGPORT/postgres"
DB=$("$BENCH_BIN" reset-db --admin-url "$ADMIN" --name profile_writes --ddl "$DDL")
ETL_SPEC_TARGET__URL="$DB" "$ENGINE" setup "$FILE_SPEC" >/dev/null

PSQL=$(command -v psql || echo /usr/lib/postgresql/15/bin/psql)
LOG="$DIR/services/postgres.log"
"$PSQL" -X -q "$ADMIN" -c "CHECKPOINT" -c "ALTER SYSTEM SET log_min_duration_statement = 0" -c "SELECT pg_reload_conf()" >/dev/null
FROM=$(stat -c %s "$LOG")
say "E ($KIND, $MESSAGES messages) with every statement's duration logged"
ETL_SPEC_TARGET__URL="$DB" RUST_LOG=warn "$BENCH_BIN" measure --out "$DIR/measure.json" --log "$DIR/engine.log" -- \
    "$ENGINE" run "$FILE_SPEC" --summary-json "$DIR/summary.json"
"$PSQL" -X -q "$ADMIN" -c "ALTER SYSTEM RESET log_min_duration_statement" -c "SELECT pg_reload_conf()" >/dev/null
tail -c +$((FROM + 1)) "$LOG" >"$DIR/statements.log"
python3 - "$DIR" "$MESSAGES" <<'PY'
import collections, json, re, sys
d, n = sys.argv[1], int(sys.argv[2])
total, count = collections.Counter(), collections.Counter()
for line in open(f"{d}/statements.log", errors="replace"):
    m = re.search(r"duration: ([0-9.]+) ms\s+(?:statement|execute [^:]*): (.*)", line)
    if m:
        key = " ".join(m.group(2).split()[:3])[:60]
        total[key] += float(m.group(1))
        count[key] += 1
s = json.load(open(f"{d}/summary.json"))
meas = json.load(open(f"{d}/measure.json"))
all_ms = sum(total.values())
print(f"\n{s['messages_per_sec']:.0f} msgs/s; engine CPU {meas['cpu_secs'] / n * 1e6:.1f} us/msg; "
      f"Postgres statement time {all_ms:.0f} ms ({all_ms * 1000 / n:.1f} us/msg)\n")
print(f"{'ms':>9} {'share':>6} {'count':>6}  statement")
for k, v in total.most_common(12):
    print(f"{v:9.1f} {v / all_ms:6.1%} {count[k]:6d}  {k}")
PY
