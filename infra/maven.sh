# Sourced by the infra scripts whose tools come as jars from Maven Central (Kafka, Avro, Beam's
# Flink runner); the caller defines `die`.
#
#   fetch_jars DIR WHAT POM [MAVEN_OPTION …]
#
# copies POM's dependencies (with the options, e.g. -Dkafka.version=4.3.1) into DIR, once:
# DIR appears whole or not at all, and DIR/.complete marks a finished copy. WHAT names the
# artifact in messages.
fetch_jars() {
    local dir="$1" what="$2" pom="$3"
    shift 3
    [[ -f "$dir/.complete" ]] && return 0
    command -v mvn >/dev/null || die "fetching $what needs Maven: apt-get install -y maven"
    echo "$(basename "$0"): fetching $what jars into $dir" >&2
    rm -rf "$dir.partial"
    local out   # mvn -q still prints colour codes: show its output only when it fails
    out="$(mvn -B -q -f "$pom" dependency:copy-dependencies "$@" \
        -DoutputDirectory="$dir.partial" 2>&1)" \
        || { echo "$out" >&2; die "Maven could not fetch $what"; }
    touch "$dir.partial/.complete"
    rm -rf "$dir" && mv "$dir.partial" "$dir"
}
