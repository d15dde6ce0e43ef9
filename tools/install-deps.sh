#!/usr/bin/env bash
# Installs the Debian packages mtok builds against, and a Python virtual environment (.venv)
# with what the Python tests and baselines need. Safe to run again: it installs only what is missing.
# With --torch (tools/test.sh), PyTorch too, for the DataLoader test; with --slurm, Debian's Slurm
# and munge, for the one-node Slurm test (tools/cluster/slurm-e2e.sh); with --browser, Debian's
# Chromium, which the report test renders `mtok report` in (headless).
set -euo pipefail
cd "$(dirname "$0")/.."

torch="" slurm="" browser=""
for a in "$@"; do
    case "$a" in
        --torch) torch=1 ;;
        --slurm) slurm=1 ;;
        --browser) browser=1 ;;
        *) echo "usage: tools/install-deps.sh [--torch] [--slurm] [--browser]" >&2; exit 64 ;;
    esac
done
pkgs=(liblmdb-dev libzstd-dev libjpeg-dev libpng-dev libopenblas-dev pkg-config python3-venv python3-dev gcc)
[ -n "$slurm" ] && pkgs+=(slurmctld slurmd slurm-client munge)
[ -n "$browser" ] && pkgs+=(chromium)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tools/requirements-test.txt
# mtokcache's C extension, built in place so that tools/python on PYTHONPATH finds it (the
# package runs its pure-Python code where it is missing; the tests run both).
(cd tools/python && ../../.venv/bin/python setup.py -q build_ext --inplace >/dev/null) \
    || echo "install-deps: mtokcache's C extension did not build; Python reads and writes run the pure-Python code" >&2
# PyTorch only for the DataLoader test and the reader benchmark's DataLoader rows. It is large
# (several GB with its CUDA wheels, under two minutes to install here), so a failed install is
# not fatal: that one test then reports itself skipped.
if [ -n "$torch" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q --disable-pip-version-check -r tools/requirements-torch.txt \
        || echo "install-deps: PyTorch did not install; the DataLoader test will be skipped" >&2
fi
