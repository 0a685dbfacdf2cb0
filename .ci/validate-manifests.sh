#!/usr/bin/env bash
# Validates the Kubernetes manifests (deploy/kubernetes) and fails on any
# problem: renders the kustomization, checks every object against the
# Kubernetes schemas (strict: unknown fields fail) and the prometheus-operator
# CRD types, checks that the PrometheusRule is deploy/prometheus/scopegate-alerts.yml,
# checks how the objects and the embedded scopegate config fit together, and
# runs a self-test proving that broken variants are rejected. Details:
# .ci/manifests.py.
#
#   .ci/validate-manifests.sh [DIR]     DIR: a kustomization folder (default deploy/kubernetes)
#
# Makes (once) a virtualenv at ${SCOPEGATE_VENV:-${TMPDIR:-/tmp}/scopegate-venv}
# with .ci/manifests-requirements.txt, and reinstalls only when that file
# changes. Optional: SCOPEGATE_BIN=path/to/scopegate also runs `scopegate
# check` on the embedded config; promtool, when installed, checks the rules.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
requirements="$repo/.ci/manifests-requirements.txt"
venv="${SCOPEGATE_VENV:-${TMPDIR:-/tmp}/scopegate-venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "manifests: installing the validation packages into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
fi

# The CRD schemas derived from the models are cached beside the packages.
export SCOPEGATE_MANIFESTS_CACHE="$venv"
exec "$venv/bin/python" "$repo/.ci/manifests.py" validate "$@"
