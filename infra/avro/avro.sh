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

# shellcheck source=../maven.sh
source "$here/../maven.sh"

fetch() {
    fetch_jars "$dir/libs" "org.apache.avro:avro:$version" "$here/pom.xml" \
        -Davro.version="$version" -DincludeScope=runtime -DexcludeArtifactIds=avro-tools
    fetch_jars "$dir/tools" "org.apache.avro:avro-tools:$version" "$here/pom.xml" \
        -Davro.version="$version" -DincludeArtifactIds=avro-tools
}

case "${1:-}" in
    fetch) fetch ;;
    classpath) fetch && echo "$dir/libs/*" ;;
    tools) fetch && echo "$dir/tools/avro-tools-$version.jar" ;;
    *) die "usage: avro.sh fetch | classpath | tools" ;;
esac
