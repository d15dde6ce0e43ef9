#!/usr/bin/env bash
# The main job on a built-in default: installs what is missing, builds mtok, writes a small cache,
# verifies it deeply, and prints its summary and one record. Output goes to ./demo-cache.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
swift build -c release --product mtok
MTOK=.build/release/mtok
rm -rf demo-cache
"$MTOK" synth-cache demo-cache --records 2000 --tokens 256 --channels 16 --latent-dtype bf16
"$MTOK" verify demo-cache --deep
"$MTOK" info demo-cache
"$MTOK" get demo-cache synthetic/00000042
