#!/usr/bin/env bash
# The main job on a built-in default: installs what is missing, builds mtok, makes an untrained
# MergeTok model (ViT-B stem, 144 tokens, VAE latents + 16384-entry VQ), tokenizes the bundled
# real photographs (tools/demo/images, an ImageFolder of 11 photos from scikit-image's data) with
# center and flip views, verifies the cache deeply, prints its summary, one record and its
# statistics, and writes an HTML report (demo/report.html).
# Everything it writes goes to ./demo.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
swift build -c release --product mtok
MTOK=.build/release/mtok
mkdir -p demo
[ -f demo/model.safetensors ] || "$MTOK" model init --preset mergetok-r-vitb-k144 --seed 0 --out demo/model.safetensors
rm -rf demo/cache
"$MTOK" tokenize tools/demo/images --model demo/model.safetensors --out demo/cache --views center,hflip
"$MTOK" verify demo/cache --deep
"$MTOK" info demo/cache
"$MTOK" get demo/cache animals/chelsea.jpg --view 1
"$MTOK" stats demo/cache
"$MTOK" report demo/cache --images tools/demo/images --out demo/report.html
echo "report: $PWD/demo/report.html (open it in any browser; it needs no network)"
