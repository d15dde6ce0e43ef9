#!/usr/bin/env bash
# Builds mtok in release mode with the Swift runtime linked in (--static-swift-stdlib) and
# installs it as PREFIX/bin/mtok (default PREFIX: /usr/local). The program then runs on any
# Debian 12 machine of the same architecture that has only the C libraries' runtime packages:
#
#   apt-get install liblmdb0 libzstd1 libjpeg62-turbo libpng16-16 libopenblas0
#
# (no Swift toolchain; tools/cluster/Dockerfile builds the cluster image this way). Building needs
# the toolchain and the -dev packages (tools/install-deps.sh installs them).
#
#   tools/install.sh [--prefix DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 64; }; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        *) echo "usage: tools/install.sh [--prefix DIR]" >&2; exit 64 ;;
    esac
done
# Its own build folder: a static and a dynamic build in one folder would relink each other's.
build=(swift build -c release --static-swift-stdlib --product mtok --scratch-path .build/static)
"${build[@]}"
install -D -m 755 "$("${build[@]}" --show-bin-path)/mtok" "$prefix/bin/mtok"
echo "installed $prefix/bin/mtok"
