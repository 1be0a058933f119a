#!/usr/bin/env bash
# The main job end to end on this machine: starts PostgreSQL and LocalStack (scripts/services.sh),
# creates a keyring if there is none, loads the example login events into login-queue, drains
# them into user_logins with `etl-engine run specs/logins.yaml --drain`, shows a few masked rows,
# and recovers one original IP with `etl-engine vault-decrypt` (audited).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

echo "==> building etl-engine"
cargo build --quiet
BIN="$ROOT/target/debug/etl-engine"

bash scripts/services.sh up

# The keyring holds the hashing and encryption keys; it never goes into a spec or a log.
export ETL_KEYRING=${ETL_KEYRING:-"$ROOT/.local/keyring.json"}
if [ ! -f "$ETL_KEYRING" ]; then
    "$BIN" keygen "$ETL_KEYRING"
fi

echo "==> loading examples/logins.jsonl into login-queue"
ETL_ENGINE_BIN="$BIN" bash scripts/load-examples.sh

echo "==> etl-engine setup specs/logins.yaml (the engine's own tables, versioned)"
"$BIN" setup specs/logins.yaml

echo "==> etl-engine run specs/logins.yaml --drain"
"$BIN" run specs/logins.yaml --drain

export PGPASSWORD=postgres
PSQL=(psql -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres -d postgres -X -q)
echo "==> a few rows of user_logins (ip and device_id are keyed tokens)"
"${PSQL[@]}" -c "SELECT user_id, device_type, left(masked_ip, 16) || '…' AS masked_ip, left(masked_device_id, 16) || '…' AS masked_device_id, locale, app_version, create_date FROM user_logins ORDER BY create_date DESC LIMIT 5"
echo "==> duplicates stay visible: the most frequent masked IPs"
"${PSQL[@]}" -c "SELECT left(masked_ip, 16) || '…' AS masked_ip, count(*) FROM user_logins GROUP BY masked_ip ORDER BY 2 DESC LIMIT 3"
echo "==> rejects (bodies stored encrypted)"
"${PSQL[@]}" -c "SELECT reason, count(*) FROM etl_rejects GROUP BY reason ORDER BY 2 DESC"

USER_ID=$("${PSQL[@]}" -At -c "SELECT user_id FROM user_logins WHERE masked_ip IS NOT NULL LIMIT 1")
echo "==> etl-engine vault-decrypt specs/logins.yaml --column masked_ip --where user_id=$USER_ID --reason demo"
"$BIN" vault-decrypt specs/logins.yaml --column masked_ip --where "user_id=$USER_ID" --reason "demo: show recovery"
echo "==> the recovery was audited"
"${PSQL[@]}" -c "SELECT at, actor, column_name, value_count, reason FROM etl_vault_audit ORDER BY id DESC LIMIT 1"
echo "==> done. Stop the services with: bash scripts/services.sh down"
