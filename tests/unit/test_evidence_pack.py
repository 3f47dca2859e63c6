"""The evidence pack (`lineage-guard evidence export | verify`): its OSCAL is valid against the
official OSCAL JSON schemas, its DSSE envelopes verify with the in-toto reference
implementation, and editing, adding or removing any file of it fails `evidence verify`."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import regex
from cryptography.hazmat.primitives import serialization
from in_toto.models.metadata import Envelope as InTotoEnvelope
from in_toto.models.metadata import Metadata
from jsonschema import validators

from lineage_guard.lineage.checkpoints import key_id, read_envelope, sign
from lineage_guard.lineage.events import Reason, Stage
from lineage_guard.lineage.hops import Outcome
from lineage_guard.lineage.store import LineageStore, open_store
from tests.cli import run_cli
from tests.lineage_contract import KEY, RUN_2, batch, filled, hop, signed

SCHEMAS = Path(__file__).resolve().parents[1] / "oscal-schema"
T0 = datetime(2026, 11, 27, 12, 0, 0, 123000, tzinfo=UTC)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not regex.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft-07 as the schemas declare, with `pattern` read by `regex` (`\p{L}`, like the XML side).
OscalValidator = validators.extend(jsonschema.Draft7Validator, {"pattern": _pattern})


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "guard.pem", tmp_path / "guard.pub"
    private.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    """Two runs, each signed: run 1 writes three batches, run 2 one with a blocked leak
    attempt and a quarantined stripped record."""
    url = f"sqlite:///{tmp_path}/lineage.db"
    with open_store(url) as store:
        filled(store)
        signed(store)
        _second_run(store)
        signed(store, run_id=RUN_2)
    yield url


def _second_run(store: LineageStore, *, leak: bool = False) -> None:
    hops = [
        hop(
            "t1", 20, origin_env="TEST", outcome=Outcome.BLOCKED, stopped_at=Stage.ENFORCE,
            reasons=(Reason(rule="leak_test_origin", message="no"),),
        ),
        hop(
            "s1", 21, content_class=None, outcome=Outcome.QUARANTINED, stopped_at=Stage.VALIDATE,
            reasons=(Reason(rule="provenance_missing", message="stripped"),),
        ),
        hop("ok", 22),
    ]  # fmt: skip
    if leak:
        hops.append(hop("leaked", 23, origin_env="STAGING"))
    entry = store.append(batch(hops, run_id=RUN_2, at=T0 + timedelta(seconds=10)))
    store.confirm([(entry, len(hops), [])], at=T0 + timedelta(seconds=11))


def export(store_url: str, keys: tuple[Path, Path], out: Path) -> Any:
    return run_cli(
        "evidence", "export", "--lineage-store", store_url, "--signing-key", keys[0],
        "--from", "2026-11-27T00:00:00Z", "--to", "2026-11-28T00:00:00Z", "--out", out,
    )  # fmt: skip


def verify(pack: Path, keys: tuple[Path, Path]) -> Any:
    return run_cli("evidence", "verify", pack, "--public-key", keys[1])


@pytest.fixture
def pack(tmp_path: Path, store_url: str, keys: tuple[Path, Path]) -> Path:
    out = tmp_path / "pack"
    result = export(store_url, keys, out)
    assert result.returncode == 0, result.stderr
    return out


def test_the_pack_holds_every_part_and_verifies(pack: Path, keys: tuple[Path, Path]) -> None:
    files = sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file())
    assert {
        "controls.json",
        "manifest.dsse.json",
        "oscal/assessment-results.json",
        "report/report.html",
        "observations/chain.json",
        "observations/leaks.json",
        "observations/sample.json",
        "checkpoints/0001-2f0c6c2e-8a4f-4d7b-9a51-6f3c1d2e7b10.dsse.json",
        f"checkpoints/0002-{RUN_2}.dsse.json",
    } <= set(files)
    result = verify(pack, keys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: evidence pack `{pack}` verifies")
    chain = json.loads((pack / "observations/chain.json").read_text())
    assert chain["basis"] == "metadata"
    assert (chain["data"]["ok"], chain["data"]["signed_checkpoints"]) == (True, 2)
    stopped = json.loads((pack / "observations/stripped_blocked.json").read_text())["data"]
    assert stopped["by_rule"] == {"provenance_missing": 1}
    crossings = json.loads((pack / "observations/crossings_blocked.json").read_text())["data"]
    assert crossings["by_rule"] == {"leak_test_origin": 1}
    sample = json.loads((pack / "observations/sample.json").read_text())["data"]
    assert [t["record_id"] for t in sample["blocked"]] == ["t1"]
    assert [t["record_id"] for t in sample["quarantined"]] == ["s1"]
    assert len(sample["delivered"]) == 3
    html = (pack / "report/report.html").read_text()
    assert html.index("<h2>Controls</h2>") < html.index("<h2>Tables</h2>")
    assert "AI Act Article 50(2)" in html
    assert "(basis: metadata)" in html
    assert json.loads((pack / "report/report.json").read_text())["basis"] == "metadata"


def test_the_oscal_is_valid_against_the_official_schemas(pack: Path) -> None:
    document = json.loads((pack / "oscal/assessment-results.json").read_text())
    for name in ("oscal_assessment-results_schema.json", "oscal_complete_schema-1-2-1.json"):
        schema = json.loads((SCHEMAS / name).read_text())
        validator = OscalValidator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
        assert [e.message for e in validator.iter_errors(document)] == [], name
        broken = json.loads(json.dumps(document))
        broken["assessment-results"]["results"][0]["observations"][0]["uuid"] = "not-a-uuid"
        assert list(validator.iter_errors(broken)), name  # the schema is really applied
    results = document["assessment-results"]
    observations = results["results"][0]["observations"]
    assert all(
        {"name": "basis", "value": "metadata", "ns": "https://lineage-guard.dev/ns/oscal"}
        in o["props"]
        for o in observations
    )
    assert "findings" not in results["results"][0]  # no leak, chains intact: nothing proven
    # every observation's evidence is a back-matter resource carrying the file's SHA-256
    resources = {r["uuid"]: r for r in results["back-matter"]["resources"]}
    for observation in observations:
        [evidence] = observation["relevant-evidence"]
        [link] = resources[evidence["href"].removeprefix("#")]["rlinks"]
        [digest] = link["hashes"]
        import hashlib

        assert hashlib.sha256((pack / link["href"]).read_bytes()).hexdigest() == digest["value"]


def test_the_same_export_gives_the_same_uuids(
    pack: Path, store_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    again = tmp_path / "again"
    assert export(store_url, keys, again).returncode == 0

    def uuids(folder: Path) -> list[str]:
        text = (folder / "oscal/assessment-results.json").read_text()
        return regex.findall(r'"uuid": ?"([0-9a-f-]{36})"', text)

    assert uuids(pack) == uuids(again) and len(uuids(pack)) > 20


def test_envelopes_verify_with_the_in_toto_reference_implementation(pack: Path) -> None:
    raw = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = {
        "keyid": key_id(KEY.public_key()),
        "keytype": "ed25519",
        "scheme": "ed25519",
        "keyval": {"public": raw.hex()},
    }
    envelopes = [pack / "manifest.dsse.json", *sorted((pack / "checkpoints").iterdir())]
    assert len(envelopes) == 3
    for path in envelopes:
        metadata = Metadata.load(str(path))
        assert isinstance(metadata, InTotoEnvelope)
        metadata.verify_signature(key)  # raises SignatureVerificationError when it fails
        statement = json.loads(metadata.payload)
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
    manifest = json.loads(Metadata.load(str(envelopes[0])).payload)  # type: ignore[attr-defined]
    assert manifest["predicateType"] == "https://lineage-guard.dev/attestations/evidence-pack/v1"
    names = {subject["name"] for subject in manifest["subject"]}
    assert "oscal/assessment-results.json" in names and "manifest.dsse.json" not in names
    # an envelope whose payload was edited does not verify with the reference implementation
    forged = json.loads(envelopes[0].read_text())
    forged["payload"] = base64.b64encode(
        base64.b64decode(forged["payload"]).replace(b"metadata", b"watermark")
    ).decode()
    envelopes[0].write_text(json.dumps(forged))
    from in_toto.exceptions import SignatureVerificationError

    with pytest.raises(SignatureVerificationError):
        Metadata.load(str(envelopes[0])).verify_signature(key)


def test_editing_adding_or_removing_any_file_fails_verify(
    pack: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    files = sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file())
    for name in files:
        copy = tmp_path / "edited"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(pack, copy)
        path = copy / name
        path.write_bytes(path.read_bytes().replace(b"e", b"E", 1))
        result = verify(copy, keys)
        assert result.returncode == 1, name
        first = result.stderr.splitlines()[0]
        if name == "manifest.dsse.json":
            assert "does not verify with the public key" in first, first
        else:
            assert first == (
                f"lineage-guard: `{name}` differs from the SHA-256 the manifest signed: it was"
                " edited"
            ), first
    (pack / "extra.json").write_text("{}")
    assert verify(pack, keys).stderr.splitlines() == [
        "lineage-guard: `extra.json` is not in the signed manifest: it was added"
    ]
    (pack / "extra.json").unlink()
    (pack / "observations/leaks.json").unlink()
    assert verify(pack, keys).stderr.splitlines() == [
        "lineage-guard: `observations/leaks.json` is listed in the manifest but missing"
    ]


def test_a_leak_is_a_finding_of_the_controls_the_leak_query_evidences(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    url = f"sqlite:///{tmp_path}/leaky.db"
    with open_store(url) as store:
        filled(store)
        signed(store)
        _second_run(store, leak=True)
        signed(store, run_id=RUN_2)
    result = export(url, keys, tmp_path / "pack")
    assert result.returncode == 1, result.stderr
    document = json.loads((tmp_path / "pack/oscal/assessment-results.json").read_text())
    findings = document["assessment-results"]["results"][0]["findings"]
    assert sorted(f["target"]["target-id"] for f in findings) == [
        "cop-measure-1-2", "gdpr-art-5-1-f", "nist-ai-rmf-measure-2-8",
    ]  # fmt: skip
    assert {f["target"]["status"]["state"] for f in findings} == {"not-satisfied"}
    assert "lineage-guard: Code of Practice Measure 1.2: not satisfied: the leak query found" in (
        result.stderr
    )
    leaks = json.loads((tmp_path / "pack/observations/leaks.json").read_text())["data"]
    assert [leak["record_id"] for leak in leaks["leaks"]] == ["leaked"]


def test_a_forged_checkpoint_in_the_store_fails_the_pack(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A checkpoint whose signed statement was altered in the store: the export reports the
    broken chain as a finding, and the pack does not verify."""
    url = f"sqlite:///{tmp_path}/forged.db"
    with open_store(url) as store:
        filled(store)
        signed(store)
        real = sign(KEY, at=T0, run_id=RUN_2, heads=store.heads(), previous=store.checkpoints()[0])
        assert real.envelope is not None
        envelope = json.loads(real.envelope)
        payload = base64.b64decode(envelope["payload"]).replace(RUN_2.encode(), b"forged-run")
        envelope["payload"] = base64.b64encode(payload).decode()
        store.add_checkpoint(read_envelope(json.dumps(envelope)))
    result = export(url, keys, tmp_path / "pack")
    assert result.returncode == 1
    assert "does not verify with the public key: it was forged or edited" in result.stderr
    verified = verify(tmp_path / "pack", keys)
    assert verified.returncode == 1
    assert verified.stderr.splitlines() == [
        "lineage-guard: `checkpoints/0002-forged-run.dsse.json` does not verify with the public key"
    ]


def test_the_digital_source_type_mapping_and_its_stops_are_in_the_pack(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """`observations/digital_source_type.json`: the IPTC codes the contract accepts and never
    accepts with HUMAN or SYNTHETIC, read from the suite, what it assumes when the field is
    absent, and the records each rule stopped; the control table says so for Art. 50(2)."""
    url = f"sqlite:///{tmp_path}/lineage.db"
    with open_store(url) as store:
        filled(store)
        signed(store)
        hops = [
            hop(
                "h1", 20, content_class="HUMAN", outcome=Outcome.QUARANTINED,
                stopped_at=Stage.VALIDATE,
                reasons=(Reason(rule="digital_source_type_generated_but_human", message="no"),),
            ),
            hop("ok", 21),
        ]  # fmt: skip
        entry = store.append(batch(hops, run_id=RUN_2, at=T0 + timedelta(seconds=10)))
        store.confirm([(entry, len(hops), [])], at=T0 + timedelta(seconds=11))
        signed(store, run_id=RUN_2)
    out = tmp_path / "pack"
    result = export(url, keys, out)
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "observations/digital_source_type.json").read_text())
    assert document["basis"] == "metadata"
    data = document["data"]
    assert data["when_absent"].startswith(
        "When absent (null, or a record written before the field existed, provenance version 1)"
        " no IPTC type is inferred: content_class alone is the record's mark"
    )
    iptc = "http://cv.iptc.org/newscodes/digitalsourcetype/"
    by_rule = {r["rule"]: r for r in data["rules"]}
    assert list(by_rule) == [
        "digital_source_type_unknown",
        "digital_source_type_generated_but_human",
        "digital_source_type_captured_but_synthetic",
    ]
    assert len(by_rule["digital_source_type_unknown"]["accepted"]) == 20
    human = by_rule["digital_source_type_generated_but_human"]
    assert (human["content_class"], human["stopped"]) == ("HUMAN", 1)
    assert iptc + "trainedAlgorithmicMedia" in human["never"]
    synthetic = by_rule["digital_source_type_captured_but_synthetic"]
    assert (synthetic["content_class"], synthetic["stopped"]) == ("SYNTHETIC", 0)
    assert iptc + "digitalCapture" in synthetic["never"]
    assert "1 stopped for their IPTC digital source type; none inferred when absent" in (
        result.stdout
    )
    assert verify(out, keys).returncode == 0
