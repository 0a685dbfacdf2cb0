#!/usr/bin/env bash
# Validates the Kubernetes manifests (deploy/kubernetes) and fails on any
# problem: renders the kustomization, checks every object against the
# Kubernetes schemas (strict: unknown fields fail) and the prometheus-operator
# CRD types, checks that the PrometheusRule is deploy/prometheus/scopegate-alerts.yml,
# checks how the objects and the embedded scopegate config fit together, and
# runs a self-test proving that broken variants are rejected; lints the
# Dockerfile with hadolint and checks it matches the Deployment. Details:
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

ready() {
    [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
        && "$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml, cloudcoil' 2>/dev/null \
        && [ -x "$venv/bin/hadolint" ]
}
if ! ready; then
    echo "manifests: installing the validation packages into $venv"
    if [ -e "$venv" ]; then
        # Only ever delete a virtualenv (whatever SCOPEGATE_VENV says).
        if [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv")" ]; then
            echo "manifests: $venv exists and is not a virtualenv; set SCOPEGATE_VENV elsewhere" >&2
            exit 2
        fi
        rm -rf "$venv"
    fi
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
fi

status=0

# The image: hadolint's rules (the few ignored ones say why, in the Dockerfile).
if "$venv/bin/hadolint" --no-color "$repo/Dockerfile"; then
    echo "manifests: Dockerfile passes hadolint"
else
    echo "FAIL Dockerfile: hadolint found problems (above)" >&2
    status=1
fi

# The CRD schemas derived from the models are cached beside the packages.
export SCOPEGATE_MANIFESTS_CACHE="$venv"
"$venv/bin/python" "$repo/.ci/manifests.py" validate "$@" || status=1
exit "$status"
