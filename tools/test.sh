#!/usr/bin/env bash
# Installs what is missing, then runs every test (Swift, and Python reading/writing Swift's caches).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh --torch
export MTOK_PYTHON="$PWD/.venv/bin/python"
swift build
swift test --parallel --num-workers 2
