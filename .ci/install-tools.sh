#!/usr/bin/env bash
# The system tools the tests use, installed the same way by .ci/run and .github/workflows/ci.yaml:
# - Debian's prometheus (with promtool) and prometheus-pushgateway: alert rules, canary analysis, drift pushes;
# - redis-server: the feature store's cluster layout;
# - wrk: the benchmark harness's C load generator (tests/test_bench_harness.py drives it);
# - Debian's postgresql: the MLflow server's database in tests/topology (initdb and pg_ctl, started by the tests;
#   Debian keeps them in /usr/lib/postgresql/<major>/bin, off PATH);
# - checkov in its own virtualenv (it pins boto3/packaging versions that clash with the suite): manifest scan;
# - kubectl with kustomize v5 to render the overlays. This machine image and GitHub's Ubuntu runners ship one;
#   Debian's kubernetes-client (1.20, kustomize v2) cannot render them, so it is checked, not installed.
# A tool that is still missing afterwards fails here, before any test runs.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v prometheus >/dev/null || packages+=(prometheus)
command -v promtool >/dev/null || packages+=(prometheus)
command -v prometheus-pushgateway >/dev/null || packages+=(prometheus-pushgateway)
command -v redis-server >/dev/null || packages+=(redis-server)
command -v wrk >/dev/null || packages+=(wrk)
initdb_path() { command -v initdb || find /usr/lib/postgresql -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1; }
[ -n "$(initdb_path)" ] || packages+=(postgresql)
if [ "${#packages[@]}" -gt 0 ]; then
  as_root=""; [ "$(id -u)" -eq 0 ] || as_root="sudo"
  $as_root apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${packages[@]}" | sort -u)
fi

make checkov-venv

missing=()
for tool in prometheus promtool prometheus-pushgateway redis-server wrk kubectl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -x .venv-checkov/bin/checkov ] || missing+=(".venv-checkov/bin/checkov")
[ -n "$(initdb_path)" ] || missing+=("initdb (postgresql)")
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-tools: still missing: ${missing[*]}" >&2
  exit 1
fi
if ! kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5'; then
  echo "install-tools: kubectl has no kustomize v5 (the overlays need it): $(kubectl version --client 2>&1 | tr '\n' ' ')" >&2
  exit 1
fi
echo "install-tools: prometheus, promtool, prometheus-pushgateway, redis-server, wrk, PostgreSQL ($(initdb_path)), checkov and kubectl (kustomize v5) ready"
