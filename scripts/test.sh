#!/usr/bin/env bash
# The whole test suite: starts throwaway services on their own ports (PostgreSQL 15, current
# LocalStack, old query-only LocalStack, a moto server for SQS and KMS), runs unit and integration
# tests against them, runs the logins end-to-end tests against other PostgreSQL versions
# (scripts/compat-matrix.sh), runs the reduced fault-injection check, and stops what it started.
#
# Ports and state can be moved with TEST_PGPORT, TEST_SQS_PORT, TEST_LEGACY_SQS_PORT, TEST_MOTO_PORT;
# state lives under .local/test*. TEST_PG_VERSIONS (default "11 16"; empty skips) lists the other
# PostgreSQL versions. FAULT_MESSAGES (default 2000) sizes the fault-injection run; FAULT_MESSAGES=0 skips it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Services are isolated per run, but share one LocalStack installation with the demo.
export ETL_VENV_DIR=${ETL_VENV_DIR:-"$ROOT/.local"}
TEST_PGPORT=${TEST_PGPORT:-55432}
TEST_SQS_PORT=${TEST_SQS_PORT:-54566}
TEST_LEGACY_SQS_PORT=${TEST_LEGACY_SQS_PORT:-54567}
TEST_MOTO_PORT=${TEST_MOTO_PORT:-54568}
TEST_PG_VERSIONS=${TEST_PG_VERSIONS-"11 16"}
FAULT_MESSAGES=${FAULT_MESSAGES:-2000}

down() {
    ETL_LOCAL_DIR="$ROOT/.local/test-moto" PGPORT=$TEST_PGPORT SQS_PORT=$TEST_MOTO_PORT \
        bash scripts/services.sh down >/dev/null 2>&1 || true
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
# moto: a third SQS implementation, and the KMS endpoint (same server, same port).
ETL_LOCAL_DIR="$ROOT/.local/test-moto" PGPORT=$TEST_PGPORT SQS_PORT=$TEST_MOTO_PORT bash scripts/services.sh up --moto

export ETL_TEST_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:$TEST_PGPORT/postgres"
export ETL_TEST_SQS_ENDPOINT="http://127.0.0.1:$TEST_SQS_PORT"
export ETL_TEST_LEGACY_SQS_ENDPOINT="http://127.0.0.1:$TEST_LEGACY_SQS_PORT"
export ETL_TEST_MOTO_ENDPOINT="http://127.0.0.1:$TEST_MOTO_PORT"
export ETL_TEST_KMS_ENDPOINT="http://127.0.0.1:$TEST_MOTO_PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

echo "==> cargo test"
cargo test --all-targets -- --test-threads=4

if [ -n "$TEST_PG_VERSIONS" ]; then
    echo "==> PostgreSQL $TEST_PG_VERSIONS: logins end to end"
    COMPAT_SQS_ENDPOINT=$ETL_TEST_SQS_ENDPOINT COMPAT_LEGACY_SQS_ENDPOINT=$ETL_TEST_LEGACY_SQS_ENDPOINT \
        bash scripts/compat-matrix.sh $TEST_PG_VERSIONS
fi

echo "==> deployment lint (Dockerfile, Kubernetes manifests)"
bash scripts/lint-deploy.sh

if [ -x scripts/fault-test.sh ] && [ "$FAULT_MESSAGES" != 0 ]; then
    echo "==> fault injection ($FAULT_MESSAGES messages)"
    # The debug build made above is enough for the reduced run; a release build would add minutes.
    FAULT_PROFILE=${FAULT_PROFILE:-dev} bash scripts/fault-test.sh --messages "$FAULT_MESSAGES"
fi
echo "==> all tests passed"
