#!/usr/bin/env bash
# Apache Beam's Prism runner, built from the Go module proxy, once per cache directory.
#
#   infra/prism/prism.sh build    builds Prism (if not yet built) and prints the absolute path
#                                 of the binary on its LAST stdout line (the interface other
#                                 scripts and tests rely on)
#
# Environment: PRISM_CACHE (default: ~/.cache/lineage-guard/prism) holds the binary (Go's own
# module and build caches are used as they are); PRISM_VERSION (default v2.77.0, the Beam version the package pins).
# Needs Go >= 1.24 (Debian's `golang-go` on a fresh machine: this script installs it).
set -euo pipefail

version="${PRISM_VERSION:-v2.77.0}"
cache="${PRISM_CACHE:-$HOME/.cache/lineage-guard/prism}"
bin_dir="$cache/$version/bin"
binary="$bin_dir/prism"

need_go() {
    if ! command -v go >/dev/null; then
        echo "prism.sh: installing Go (Debian golang-go)" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
    fi
}

build() {
    if [[ -x "$binary" ]]; then
        echo "$binary"
        return
    fi
    need_go
    mkdir -p "$bin_dir"
    echo "prism.sh: building prism $version (Go module proxy; a few minutes the first time)" >&2
    GOBIN="$bin_dir" go install "github.com/apache/beam/sdks/v2/go/cmd/prism@$version" >&2
    echo "$binary"
}

case "${1:-}" in
    build) build ;;
    *)
        echo "usage: $0 build   (prints the Prism binary's absolute path on its last line)" >&2
        exit 2
        ;;
esac
