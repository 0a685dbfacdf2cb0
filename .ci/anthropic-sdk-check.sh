#!/usr/bin/env bash
# The real Anthropic Python SDK through scopegate to a recording
# upstream (JSON and streaming; key in x-api-key and as a Bearer token).
#   .ci/anthropic-sdk-check.sh path/to/scopegate
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SCOPEGATE_SDK_VENV:-${TMPDIR:-/tmp}/scopegate-sdk-venv}"
if ! "$venv/bin/python" -c 'import anthropic' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/.ci/sdk/requirements.txt"
fi
"$venv/bin/python" "$repo/.ci/sdk/anthropic_check.py" "$1"
