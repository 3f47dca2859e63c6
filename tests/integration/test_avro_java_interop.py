"""The guard against Apache Avro's Java implementation, the reference for the Avro wire formats.

Java (org.apache.avro:avro and avro-tools from Maven Central, fetched by `infra/avro/avro.sh`;
Kafka's Java clients) writes single-object messages to the real broker and container files
with every codec Avro defines; the guard reads them with the right verdicts. Java decodes,
with `BinaryMessageDecoder`, what the guard delivers and what `encode_single_object` writes.
A round trip through our own code cannot see a mistake shared by our encoder and decoder;
these tests can.
"""

from __future__ import annotations

import copy
import io
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
import pytest

from lineage_guard.contract.schemas import WRITER_SCHEMAS, load_schema
from lineage_guard.generate import (
    CONTACT,
    EMAIL_ACTIVITY,
    MEDIA_ASSET,
    Faults,
    Generated,
    faulty_sync_schema,
    generate,
)
from lineage_guard.io.decode import encode_single_object, fingerprint64, rabin_fingerprint
from lineage_guard.io.files import AVRO_CODECS, write_avro
from tests.cli import run_cli
from tests.integration.kafka_helpers import drain, guard_args, guard_cli, new_topics, produce

ROOT = Path(__file__).resolve().parents[2]
AVRO_SH = ROOT / "infra" / "avro" / "avro.sh"
JAVA_SOURCE = Path(__file__).parent / "java" / "AvroInterop.java"
YEAR_10000 = 253_402_300_800_000  # 10000-01-01T00:00:00Z in epoch millis
BEFORE_YEAR_1 = -(2**62)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Java:
    classpath: str
    tools_jar: str
    schemas_dir: str

    def run(self, *args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Our Java program (`java/AvroInterop.java`) on Avro's and Kafka's Java libraries."""
        return subprocess.run(
            ["java", "-cp", self.classpath, "AvroInterop", args[0], self.schemas_dir]
            + [str(a) for a in args[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def tools(self, *args: str | Path, out: Path) -> None:
        """avro-tools, the command-line tool users run; its stdout goes to `out`."""
        with out.open("wb") as handle:
            done = subprocess.run(
                ["java", "-jar", self.tools_jar, *map(str, args)],
                stdout=handle,
                stderr=subprocess.PIPE,
                timeout=300,
            )
        assert done.returncode == 0, done.stderr.decode(errors="replace")


@pytest.fixture(scope="session")
def java(tmp_path_factory: pytest.TempPathFactory) -> Java:
    def avro_sh(command: str) -> str:
        done = subprocess.run(
            ["bash", str(AVRO_SH), command], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    libs, tools_jar = avro_sh("classpath"), avro_sh("tools")
    classes = tmp_path_factory.mktemp("java-classes")
    compiled = subprocess.run(
        ["javac", "-Xlint:all", "-Werror", "-d", str(classes), "-cp", libs, str(JAVA_SOURCE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compiled.returncode == 0, compiled.stderr
    schemas_dir = str(resources.files("lineage_guard.schemas"))
    return Java(classpath=f"{classes}:{libs}", tools_jar=tools_jar, schemas_dir=schemas_dir)


def avro_values(value: Any) -> Any:
    """A record as Java's `GenericData.toString` shows it: timestamps as epoch millis."""
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: avro_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [avro_values(v) for v in value]
    return value


def java_decoded(output: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for line in output.splitlines():
        assert not line.startswith("ERROR"), line
        schema, _, record = line.partition("\t")
        yield schema, json.loads(record)


def write_avro_json(path: Path, schema: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """Records in Avro's JSON encoding (unions tagged), which Java's JsonDecoder reads."""
    with path.open("w", encoding="utf-8") as handle:
        fastavro.json_writer(handle, schema, records)
    return path


def schema_json(schema: Any) -> str:
    """A schema as a plain `.avsc` text, logical types kept (fastavro's markers dropped;
    Parsing Canonical Form would drop `logicalType`, so it is no schema file for a writer)."""

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items() if not k.startswith("__fastavro")}
        if isinstance(node, list):
            return [plain(v) for v in node]
        return node

    return json.dumps(plain(schema))


def declares_timestamp_millis(path: Path) -> bool:
    """Whether the file's writer schema keeps `timestamp-millis` (so the lenient reading of
    out-of-range timestamps is what the test exercises, not a plain long)."""
    header = fastavro.block_reader(path.open("rb")).metadata["avro.schema"]
    return '"logicalType":"timestamp-millis"' in header.replace(" ", "")


def test_fingerprints_and_headers_agree_with_java(java: Java) -> None:
    done = java.run("fingerprint")
    assert done.returncode == 0, done.stderr
    from_java = {
        name: (int(value), header)
        for name, value, header in (line.split("\t") for line in done.stdout.splitlines())
    }
    assert set(from_java) == set(WRITER_SCHEMAS)  # today's schemas and the history's
    for name, (value, header) in from_java.items():
        assert fingerprint64(load_schema(name)) == value
        assert "c301" + rabin_fingerprint(load_schema(name)).hex() == header
        record = next(generate(1, seed=1, entities=(name.partition("@")[0],))).record
        assert encode_single_object(record, name)[:10].hex() == header
    # Provenance version 1 keeps the header issue 8 reported; version 2 has its own.
    assert from_java[f"{CONTACT}@1"][1] == "c30108ec9fae658a3871"
    assert from_java[CONTACT][1] == "c30186f36ce3f322d08f"


def test_java_decodes_what_encode_single_object_writes(java: Java) -> None:
    generated = list(generate(300, seed=61))
    messages = [encode_single_object(g.record, g.schema).hex() for g in generated]
    done = java.run("decode-hex", stdin="\n".join(messages) + "\n")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    decoded = list(java_decoded(done.stdout))
    assert [schema for schema, _ in decoded] == [g.schema for g in generated]
    assert [record for _, record in decoded] == [avro_values(g.record) for g in generated]


def _expected_rules(record: dict[str, Any]) -> set[str]:
    """What the guard (policies `production` and `tenant:acme`) must decide for a record."""
    provenance = record["provenance"]
    if provenance["generated_at"] == YEAR_10000:
        return {"generated_at_in_future"}
    if provenance["content_class"] != "HUMAN" and provenance["generator"] is None:
        return {"generator_required", "generated_at_required"} | (
            {"disclosure_required"} if provenance["content_class"] == "SYNTHETIC" else set()
        )
    if provenance["origin_env"] != "PRODUCTION":
        return {f"leak_{provenance['origin_env'].lower()}_origin"}
    if record["tenant_id"] != "acme":
        return {"tenant_mismatch"}
    return set()


def _kafka_traffic() -> list[Generated]:
    """Contacts, emails and media assets with every fault that fits the real schemas."""
    faults = Faults(stripped=0.08, test_origin=0.08, other_tenant=0.05)
    generated = [g for g in generate(600, seed=62, faults=faults) if g.record["provenance"]]
    far = next(g for g in generated if g.fault is None and g.record["provenance"]["generator"])
    far.record["provenance"]["generated_at"] = YEAR_10000  # legal Avro; Java writes it
    return generated


def test_java_single_object_messages_through_the_guard_and_back_to_java(
    java: Java, kafka_bootstrap: str, tmp_path: Path
) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    generated = _kafka_traffic()
    by_java = generated[0::2]  # Java's BinaryMessageEncoder and KafkaProducer
    by_python = generated[1::2]  # encode_single_object and confluent-kafka
    inputs = []
    for entity in (CONTACT, EMAIL_ACTIVITY, MEDIA_ASSET):
        records = [g.record for g in by_java if g.schema == entity]
        path = write_avro_json(tmp_path / f"{entity}.json", load_schema(entity), records)
        inputs.append(f"{entity}={path}")
    produced = java.run("produce", kafka_bootstrap, src, *inputs)
    assert produced.returncode == 0, produced.stderr
    assert f"produced {len(by_java)}" in produced.stderr
    produce(
        kafka_bootstrap,
        src,
        [
            (g.record["record_id"].encode(), encode_single_object(g.record, g.schema), [])
            for g in by_python
        ],
    )

    result = guard_cli(
        *guard_args(kafka_bootstrap, src, out, quarantine, "java-interop"),
        "--no-lineage",
        "--sink-policy",
        "production",
        "--sink-policy",
        "tenant:acme",
    )
    assert result.returncode == 0, result.stderr
    expected = {g.record["record_id"]: _expected_rules(g.record) for g in generated}
    allowed = {rid for rid, rules in expected.items() if not rules}
    assert f"read {len(generated)}, allowed {len(allowed)}," in result.stderr
    assert {"generated_at_in_future", "generator_required", "tenant_mismatch"} <= set().union(
        *expected.values()
    )

    stopped = drain(kafka_bootstrap, quarantine)
    assert {
        m.key.decode(): {r["rule"] for r in json.loads(m.header("lineage-guard.reasons") or b"")}
        for m in stopped
        if m.key is not None
    } == {rid: rules for rid, rules in expected.items() if rules}
    for message in stopped:  # Confluent's DLQ headers beside ours
        reasons = json.loads(message.header("lineage-guard.reasons") or b"")
        assert message.header("__rule.name") == reasons[0]["rule"].encode()
        assert message.header("__rule.mode") == b"READ"
        assert message.header("__rule.topic") == src.encode()
        assert message.header("__rule.subject") == f"{src}-value".encode()
        assert reasons[0]["message"].encode() in (message.header("__rule.exception") or b"")

    # Java decodes everything the guard delivered: its own messages and encode_single_object's.
    decoded = java.run("decode-topic", kafka_bootstrap, out, str(len(allowed)))
    assert decoded.returncode == 0, decoded.stdout[-2000:] + decoded.stderr
    records = {r["record_id"]: (s, r) for s, r in java_decoded(decoded.stdout)}
    assert set(records) == allowed
    for g in generated:
        if g.record["record_id"] in allowed:
            assert records[g.record["record_id"]] == (g.schema, avro_values(g.record))
    assert {g.record["record_id"] for g in by_java} & allowed
    assert {g.record["record_id"] for g in by_python} & allowed


@pytest.fixture(scope="module")
def java_container_files(
    java: Java, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[Path], list[dict[str, Any]], dict[int, set[str]]]:
    """400 contacts written by avro-tools `fromjson` once per codec, and the verdicts due."""
    folder = tmp_path_factory.mktemp("java-files")
    generated = list(generate(400, seed=63, entities=(CONTACT,), faults=Faults(stripped=0.1)))
    records = [copy.deepcopy(g.record) for g in generated]
    expected = {
        i: _expected_rules(r) if r["provenance"] else {"provenance_missing"}
        for i, r in enumerate(records)
    }
    humans = [i for i, r in enumerate(records) if not expected[i]]
    records[humans[0]]["provenance"]["generated_at"] = YEAR_10000
    records[humans[1]]["provenance"]["generated_at"] = BEFORE_YEAR_1
    expected[humans[0]] = {"generated_at_in_future"}
    expected[humans[1]] = {"wrong_type"}
    # The careless sync job's schema (provenance nullable), as a plain schema file.
    schema = faulty_sync_schema(CONTACT)
    schema_file = folder / "contact-sync.avsc"
    schema_file.write_text(schema_json(schema))
    source = write_avro_json(folder / "contacts.json", schema, records)
    files = []
    for codec in AVRO_CODECS:  # (each file's header keeps the logical types: checked below)
        path = folder / f"contacts-{codec}.avro"
        # avro-tools' default `--level -1` is no valid xz preset (it fails): give xz a level.
        level = ["--level", "6"] if codec == "xz" else []
        java.tools(
            "fromjson", "--codec", codec, *level, "--schema-file", schema_file, source, out=path
        )
        files.append(path)
    return files, records, {i: rules for i, rules in expected.items() if rules}


def test_validate_reads_java_container_files_of_every_codec(
    java_container_files: tuple[list[Path], list[dict[str, Any]], dict[int, set[str]]],
) -> None:
    files, _, expected = java_container_files
    for path in files:
        codec = path.stem.removeprefix("contacts-")
        assert fastavro.block_reader(path.open("rb")).codec == codec
        assert declares_timestamp_millis(path)
        result = run_cli("validate", path, "--format", "json")
        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        assert report["total"] == 400, codec
        verdicts = {r["index"]: {v["rule"] for v in r["violations"]} for r in report["rejected"]}
        assert verdicts == expected, codec


def test_file_mode_reads_java_container_files_of_every_codec(
    java_container_files: tuple[list[Path], list[dict[str, Any]], dict[int, set[str]]],
    tmp_path: Path,
) -> None:
    files, records, expected = java_container_files
    out = tmp_path / "out"
    inputs = [arg for path in files for arg in ("--input", path)]
    result = run_cli("run", *inputs, "--output-dir", out, "--no-lineage")
    assert result.returncode == 0, result.stderr
    assert f"read {400 * len(files)}, allowed {(400 - len(expected)) * len(files)}," in (
        result.stderr
    )
    by_id = {r["record_id"]: i for i, r in enumerate(records)}
    for path in files:
        name = path.name.split(".")[0]
        stopped = [json.loads(line) for line in (out / f"{name}.quarantine.jsonl").open()]
        allowed = [json.loads(line) for line in (out / f"{name}.allowed.jsonl").open()]
        assert {
            by_id[e["record"]["record_id"]]: {v["rule"] for v in e["violations"]} for e in stopped
        } == expected, name
        assert len(allowed) == 400 - len(expected)


def test_avro_tools_random_file_is_checked_record_by_record(java: Java, tmp_path: Path) -> None:
    # avro-tools' random values: timestamps anywhere in the 64-bit range, random strings.
    schema_file = tmp_path / "contact.avsc"
    schema_file.write_text(schema_json(load_schema(CONTACT)))
    path = tmp_path / "random.avro"
    java.tools(
        "random", "--count", "3000", "--seed", "8", "--schema-file", schema_file, "-", out=path
    )
    assert declares_timestamp_millis(path)
    result = run_cli("validate", path, "--format", "json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] == 3000
    rules = {v["rule"] for r in report["rejected"] for v in r["violations"]}
    assert {"generated_at_in_future", "wrong_type"} <= rules  # timestamps past 9999 / before 1

    run = run_cli("run", "--input", path, "--output-dir", tmp_path / "out", "--no-lineage")
    assert run.returncode == 0, run.stderr
    summary = re.search(r"read (\d+), allowed (\d+), quarantined (\d+), blocked (\d+)", run.stderr)
    assert summary is not None, run.stderr
    read, _, quarantined, _ = map(int, summary.groups())
    assert (read, quarantined) == (3000, len(report["rejected"]))


def test_avro_tools_reads_the_container_files_lineage_guard_writes(
    java: Java, tmp_path: Path
) -> None:
    generated = list(generate(200, seed=64, entities=(EMAIL_ACTIVITY,)))
    path = tmp_path / "emails.avro"
    write_avro(path, load_schema(EMAIL_ACTIVITY), (g.record for g in generated))
    as_json = tmp_path / "emails.json"
    java.tools("tojson", path, out=as_json)
    lines = as_json.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    for line, g in zip(lines, generated, strict=True):
        # avro-tools prints Avro's JSON encoding: unions tagged with their branch.
        expected = io_json(load_schema(EMAIL_ACTIVITY), g.record)
        assert json.loads(line) == expected


def io_json(schema: dict[str, Any], record: dict[str, Any]) -> Any:
    """The record in Avro's JSON encoding, as fastavro writes it."""
    buffer = io.StringIO()
    fastavro.json_writer(buffer, schema, [record])
    return json.loads(buffer.getvalue())


def test_the_rust_reader_reads_java_bodies_as_fastavro_does(java: Java, tmp_path: Path) -> None:
    """avro-tools' random Contact records (timestamps anywhere in 64 bits, random strings),
    their bodies as Java wrote them, through the columnar chain (the Rust reader, raw bodies)
    and through the per-record stages (fastavro): the same verdicts, hops and Merkle roots."""
    import io

    from lineage_guard import arrow_batch
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.io import arrow_decode
    from lineage_guard.io.avro import lenient
    from lineage_guard.io.decode import Decoder
    from lineage_guard.items import Batch, Item, Source
    from tests.unit.test_guard_chain import POLICIES, _assert_same, _by_chain, _by_stages

    if not arrow_decode.available():
        pytest.skip("the Rust reader is not built (CI requires it)")
    schema_file = tmp_path / "contact.avsc"
    schema_file.write_text(schema_json(load_schema(CONTACT)))
    path = tmp_path / "random.avro"
    java.tools(
        "random", "--count", "3000", "--seed", "9", "--schema-file", schema_file, "-", out=path
    )
    bodies: list[bytes] = []
    reading = lenient(load_schema(CONTACT))
    with path.open("rb") as handle:
        for block in fastavro.block_reader(handle):
            data = block.bytes_.getvalue()
            stream = io.BytesIO(data)
            for _ in range(block.num_records):
                start = stream.tell()
                fastavro.schemaless_reader(stream, reading, None)
                bodies.append(data[start : stream.tell()])
    assert len(bodies) == 3000
    decoder, validator = Decoder(raw_schema=CONTACT), SuiteValidator()
    read = 0
    for start in range(0, len(bodies), 1000):
        values = bodies[start : start + 1000]
        offsets = list(range(start, start + len(values)))
        items = tuple(
            Item(source=Source(topic="j", partition=0, offset=o, value=v))
            for o, v in zip(offsets, values, strict=True)
        )
        expected, hops = _by_stages(
            Batch(topic="j", partition=0, items=items), validator, POLICIES, decoder
        )
        gb, rows = _by_chain(
            arrow_batch.from_messages("j", 0, offsets, values), validator, POLICIES, decoder
        )
        _assert_same(expected, hops, gb, rows, decoder)
        read += sum(gb.column("read").to_pylist())
    assert read > 1000, read  # most bodies are read by the Rust reader, not by the fallback


# ---- schema evolution: provenance version 1 (before `digital_source_type`) and today's ------

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# (content class, digital source type, the rule it breaks) for today's records
SOURCE_TYPE_CASES = [
    ("HUMAN", IPTC + "digitalCapture", None),
    ("SYNTHETIC", IPTC + "trainedAlgorithmicMedia", None),
    ("AI_ASSISTED", IPTC + "compositeWithTrainedAlgorithmicMedia", None),
    ("SYNTHETIC", IPTC + "algorithmicMedia", None),
    ("HUMAN", None, None),
    ("HUMAN", IPTC + "trainedAlgorithmicMedia", "digital_source_type_generated_but_human"),
    ("SYNTHETIC", IPTC + "digitalCapture", "digital_source_type_captured_but_synthetic"),
    (
        "AI_ASSISTED",
        "https://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture",
        "digital_source_type_unknown",
    ),
    ("HUMAN", "trainedAlgorithmicMedia", "digital_source_type_unknown"),
]


def _evolving_records(count: int, seed: int) -> list[tuple[str, dict[str, Any], set[str]]]:
    """(writer schema name, record, the rules it must break): every fifth record as
    written before `digital_source_type` (`NAME@1`, the field absent), the rest today's, with
    digital source types that agree with their class, contradict it, or are no IPTC URI."""
    out = []
    for n, g in enumerate(generate(count, seed=seed)):
        provenance = g.record["provenance"]
        if n % 5 == 0:  # 5: odd and even positions, and every case below, get their share
            provenance.pop("digital_source_type")
            out.append((f"{g.schema}@1", g.record, set()))
            continue
        content_class, source_type, rule = SOURCE_TYPE_CASES[n % len(SOURCE_TYPE_CASES)]
        if provenance["content_class"] != content_class:
            provenance["digital_source_type"] = None
            out.append((g.schema, g.record, set()))
            continue
        provenance["digital_source_type"] = source_type
        out.append((g.schema, g.record, {rule} if rule else set()))
    return out


def _as_java_reads(record: dict[str, Any]) -> Any:
    """The record as Java reads it with today's schema: a field added since at its default."""
    provenance = {"digital_source_type": None, **record["provenance"]}
    return avro_values({**record, "provenance": provenance})


def test_schema_evolution_through_kafka_java_and_the_guard(
    java: Java, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Java and confluent-kafka each write messages with provenance version 1 and with
    today's schema; the guard reads all four kinds to the same verdicts (the new rule on
    today's records, nothing lost or misread on version 1's), and Java decodes everything
    the guard delivered with today's schema, version 1's records with the field null."""
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    records = _evolving_records(480, seed=65)
    by_java, by_python = records[0::2], records[1::2]
    inputs = []
    for name in sorted({schema for schema, _, _ in by_java}):
        path = write_avro_json(
            tmp_path / f"{name}.json",
            load_schema(name),
            [r for schema, r, _ in by_java if schema == name],
        )
        inputs.append(f"{name}={path}")
    produced = java.run("produce", kafka_bootstrap, src, *inputs)
    assert produced.returncode == 0, produced.stderr
    assert f"produced {len(by_java)}" in produced.stderr
    produce(
        kafka_bootstrap,
        src,
        [
            (r["record_id"].encode(), encode_single_object(r, schema), [])
            for schema, r, _ in by_python
        ],
    )
    result = guard_cli(
        *guard_args(kafka_bootstrap, src, out, quarantine, "java-evolution"), "--no-lineage"
    )
    assert result.returncode == 0, result.stderr
    expected = {r["record_id"]: rules for _, r, rules in records}
    allowed = {rid for rid, rules in expected.items() if not rules}
    assert f"read {len(records)}, allowed {len(allowed)}," in result.stderr
    stopped = drain(kafka_bootstrap, quarantine)
    assert {
        m.key.decode(): {r["rule"] for r in json.loads(m.header("lineage-guard.reasons") or b"")}
        for m in stopped
        if m.key is not None
    } == {rid: rules for rid, rules in expected.items() if rules}
    assert set().union(*expected.values()) == {
        "digital_source_type_generated_but_human",
        "digital_source_type_captured_but_synthetic",
        "digital_source_type_unknown",
    }
    for writers in (by_java, by_python):  # each writer wrote both versions that passed
        assert {s.endswith("@1") for s, r, rules in writers if not rules} == {True, False}

    decoded = java.run("decode-topic", kafka_bootstrap, out, str(len(allowed)))
    assert decoded.returncode == 0, decoded.stdout[-2000:] + decoded.stderr
    got = {r["record_id"]: (s, r) for s, r in java_decoded(decoded.stdout)}
    assert set(got) == allowed
    for schema, record, rules in records:
        if not rules:
            assert got[record["record_id"]] == (schema.partition("@")[0], _as_java_reads(record))


def test_validate_reads_java_files_of_both_versions_and_java_reads_ours(
    java: Java, tmp_path: Path
) -> None:
    """avro-tools writes container files with provenance version 1 and with today's schema;
    `validate` gives each record its verdict. avro-tools reads the files we write with
    today's schema, digital source types included."""
    records = _evolving_records(240, seed=66)
    for version in ("@1", ""):
        for entity in (CONTACT, EMAIL_ACTIVITY, MEDIA_ASSET):
            name = entity + version
            chosen = [(r, rules) for s, r, rules in records if s == name]
            schema_file = tmp_path / f"{name}.avsc"
            schema_file.write_text(schema_json(load_schema(name)))
            source = write_avro_json(
                tmp_path / f"{name}.json", load_schema(name), [r for r, _ in chosen]
            )
            path = tmp_path / f"{name}.avro"
            java.tools("fromjson", "--schema-file", schema_file, source, out=path)
            result = run_cli("validate", path, "--format", "json")
            report = json.loads(result.stdout)
            want = {i: rules for i, (_, rules) in enumerate(chosen) if rules}
            assert result.returncode == (1 if want else 0), result.stderr
            assert report["total"] == len(chosen) > 0
            assert {
                r["index"]: {v["rule"] for v in r["violations"]} for r in report["rejected"]
            } == want, name
            assert bool(want) == (version == ""), name  # the rule applies to today's only

    ours = [r for s, r, _ in records if s == MEDIA_ASSET]
    path = tmp_path / "ours.avro"
    write_avro(path, load_schema(MEDIA_ASSET), ours)
    as_json = tmp_path / "ours.json"
    java.tools("tojson", path, out=as_json)
    lines = as_json.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        io_json(load_schema(MEDIA_ASSET), r) for r in ours
    ]
    assert {json.loads(line)["provenance"]["digital_source_type"] is None for line in lines} == {
        True,
        False,
    }
