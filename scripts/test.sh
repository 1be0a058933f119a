#!/usr/bin/env bash
# The whole test suite: starts throwaway services on their own ports (PostgreSQL, current
# LocalStack, old query-only LocalStack), runs unit and integration tests against them, runs the
# reduced fault-injection check, and stops what it started.
#
# Ports and state can be moved with TEST_PGPORT, TEST_SQS_PORT, TEST_LEGACY_SQS_PORT; state lives
# under .local/test*. FAULT_MESSAGES (default 2000) sizes the fault-injection run; FAULT_MESSAGES=0 skips it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Services are isolated per run, but share one LocalStack installation with the demo.
export ETL_VENV_DIR=${ETL_VENV_DIR:-"$ROOT/.local"}
TEST_PGPORT=${TEST_PGPORT:-55432}
TEST_SQS_PORT=${TEST_SQS_PORT:-54566}
TEST_LEGACY_SQS_PORT=${TEST_LEGACY_SQS_PORT:-54567}
FAULT_MESSAGES=${FAULT_MESSAGES:-2000}

down() {
    ETL_LOCAL_DIR="$ROOT/.local/test-legacy" PGPORT=$TEST_PGPORT SQS_PORT=$TEST_LEGACY_SQS_PORT \
        bash scripts/services.sh down >/dev/null 2>&1 || true
    ETL_LOCAL_DIR="$ROOT/.local/test" PGPORT=$TEST_PGPORT SQS_PORT=$TEST_SQS_PORT \
        bash scripts/services.sh down >/dev/null 2>&1 || true
}
trap down EXIT

echo "==> building"
cargo build --all-targets --quiet

echo "==> starting test services"
ETL_LOCAL_DIR="$ROOT/.local/test" PGPORT=$TEST_PGPORT SQS_PORT=$TEST_SQS_PORT bash scripts/services.sh up
# The legacy LocalStack reuses the PostgreSQL started above (same port).
ETL_LOCAL_DIR="$ROOT/.local/test-legacy" PGPORT=$TEST_PGPORT SQS_PORT=$TEST_LEGACY_SQS_PORT bash scripts/services.sh up --legacy-sqs

export ETL_TEST_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:$TEST_PGPORT/postgres"
export ETL_TEST_SQS_ENDPOINT="http://127.0.0.1:$TEST_SQS_PORT"
export ETL_TEST_LEGACY_SQS_ENDPOINT="http://127.0.0.1:$TEST_LEGACY_SQS_PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

echo "==> cargo test"
cargo test --all-targets -- --test-threads=4

echo "==> deployment lint (Dockerfile, Kubernetes manifests)"
bash scripts/lint-deploy.sh

if [ -x scripts/fault-test.sh ] && [ "$FAULT_MESSAGES" != 0 ]; then
    echo "==> fault injection ($FAULT_MESSAGES messages)"
    # The debug build made above is enough for the reduced run; a release build would add minutes.
    FAULT_PROFILE=${FAULT_PROFILE:-dev} bash scripts/fault-test.sh --messages "$FAULT_MESSAGES"
fi
echo "==> all tests passed"
