#!/usr/bin/env bash
# Installs what is missing, then runs every test (Swift, and Python reading/writing Swift's caches).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh --torch --slurm --browser
export MTOK_PYTHON="$PWD/.venv/bin/python"
swift build
# The statically linked release binary, as users install it: the cluster tests run it.
tools/install.sh --prefix .build/static-prefix
swift test --parallel --num-workers 2
