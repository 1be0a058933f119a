#!/usr/bin/env bash
# Sends the example messages of examples/ to the queue named in a spec (default: the logins
# pipeline), through the engine's own SQS client, so it works with old and current LocalStack.
#   scripts/load-examples.sh [SPEC] [FILE.jsonl]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SPEC=${1:-"$ROOT/specs/logins.yaml"}
FILE=${2:-"$ROOT/examples/logins.jsonl"}
BIN=${ETL_ENGINE_BIN:-"$ROOT/target/debug/etl-engine"}
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build --quiet)
fi
exec "$BIN" send "$SPEC" "$FILE" --create-queue
