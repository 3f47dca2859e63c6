#!/usr/bin/env bash
# Apache Avro's Java reference implementation from Maven Central, for the interoperability
# tests (tests/integration/test_avro_java_interop.py). No build: the jars are fetched once.
#
#   avro.sh fetch       download the jars (once); prints nothing when already there
#   avro.sh classpath   fetch if needed; prints the library classpath (Avro + codecs +
#                       Kafka clients) for javac/java
#   avro.sh tools       fetch if needed; prints the path of the avro-tools jar
#
# Environment: AVRO_VERSION (1.12.1), LINEAGE_GUARD_CACHE (~/.cache/lineage-guard).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="${AVRO_VERSION:-1.12.1}"   # keep in step with pom.xml
cache="${LINEAGE_GUARD_CACHE:-$HOME/.cache/lineage-guard}"
dir="$cache/avro-$version"

die() { echo "avro.sh: $*" >&2; exit 1; }

fetch() {
    [[ -f "$dir/.complete" ]] && return 0
    command -v mvn >/dev/null || die "fetching Avro $version needs Maven: apt-get install -y maven"
    echo "avro.sh: fetching Apache Avro $version jars into $dir" >&2
    rm -rf "$dir.partial"
    local out   # mvn -q still prints colour codes: show its output only when it fails
    out="$(mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies -Davro.version="$version" \
        -DincludeScope=runtime -DexcludeArtifactIds=avro-tools \
        -DoutputDirectory="$dir.partial/libs" 2>&1 \
        && mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies -Davro.version="$version" \
        -DincludeArtifactIds=avro-tools -DoutputDirectory="$dir.partial/tools" 2>&1)" \
        || { echo "$out" >&2; die "Maven could not fetch org.apache.avro:avro:$version"; }
    touch "$dir.partial/.complete"
    rm -rf "$dir" && mv "$dir.partial" "$dir"   # appears whole or not at all
}

case "${1:-}" in
    fetch) fetch ;;
    classpath) fetch && echo "$dir/libs/*" ;;
    tools) fetch && echo "$dir/tools/avro-tools-$version.jar" ;;
    *) die "usage: avro.sh fetch | classpath | tools" ;;
esac
