"""`lineage-guard evidence export`: the auditor's evidence pack for a period, and its check.

A pack is a folder:

    controls.json                     the control mapping used (`evidence.controls`)
    observations/KIND.json            one file per kind of observation (`controls.json`:
                                      `observation_kinds`), each saying `basis: metadata`
    checkpoints/NNNN-RUN.dsse.json    every signed checkpoint in the store, as signed
    report/report.html …              the evidence report (`lineage.report`), control table first
    oscal/assessment-results.json     OSCAL assessment results: one observation per control and
                                      kind, tied to its file by SHA-256 (back-matter `rlinks`)
    manifest.dsse.json                every other file's SHA-256 as the subjects of an in-toto
                                      Statement v1 (predicateType `MANIFEST_PREDICATE`) in a
                                      DSSE envelope signed with the Ed25519 key

The figures come from the same queries as the CLI (`lineage.queries`, `lineage.report`); no
query is written twice. UUIDs are derived from the pack's identity (store, period, mapping),
so the same export gives the same UUIDs. A finding is written only where a rule proves it: a
leak the leak query found, a broken chain; the absence of a finding claims nothing.

`verify_pack` checks a pack offline with the public key: the manifest's signature, every
file's digest, that no file was added, and every checkpoint's signature and chaining.
"""

from __future__ import annotations

import hashlib
import html
import json
import platform
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import FormatError, VerificationError

from lineage_guard.evidence.controls import Control, Mapping, load_mapping, mapping_bytes
from lineage_guard.lineage import queries
from lineage_guard.lineage.chain import ChainHead
from lineage_guard.lineage.checkpoints import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    Checkpoint,
    canonical,
    dsse_key,
    dsse_signer,
    is_signed_by,
    key_id,
    read_envelope,
)
from lineage_guard.lineage.errors import UnusableInputError
from lineage_guard.lineage.events import BASIS, format_time, parse_time
from lineage_guard.lineage.hops import Outcome
from lineage_guard.lineage.private import private_dir, write_private
from lineage_guard.lineage.report import Report, build_report, write_report
from lineage_guard.lineage.store import LineageStore

MANIFEST = "manifest.dsse.json"
MANIFEST_PREDICATE = "https://lineage-guard.dev/attestations/evidence-pack/v1"
OSCAL_FILE = "oscal/assessment-results.json"
PROPERTY_NS = "https://lineage-guard.dev/ns/oscal"
SAMPLE_PER_OUTCOME = 3
SAMPLE_POOL = 1000  # record ids read per outcome before the deterministic pick


@dataclass(frozen=True, kw_only=True)
class ControlRow:
    """One row of the control table: a control and what the period showed for it."""

    control: Control
    observed: str  # the figures, one line
    finding: str | None  # "not satisfied: …" only where a rule proves it


@dataclass(frozen=True, kw_only=True)
class Pack:
    out_dir: Path
    files: dict[str, str]  # relative path -> sha256, the manifest's subjects
    rows: tuple[ControlRow, ...]
    chain_ok: bool


def export_pack(
    store: LineageStore,
    out_dir: Path,
    *,
    key: Ed25519PrivateKey,
    since: datetime | None,
    until: datetime | None,
    at: datetime | None = None,
) -> Pack:
    """Write the evidence pack of `store` for `since <= at < until` into `out_dir`."""
    at = at or datetime.now(UTC)
    mapping = load_mapping()
    _folder(out_dir)
    if any(out_dir.iterdir()):
        raise UnusableInputError(
            f"`{out_dir}` is not empty: an evidence pack is written into a new folder."
        )
    period = {
        "from": format_time(since) if since else None,
        "to": format_time(until) if until else None,
    }
    identity = canonical({"store": store.url, "period": period, "mapping": mapping.version})
    ids = _Ids(identity)
    report = build_report(store, since=since, until=until)
    leaks = queries.leaks(store, since=since, until=until)
    checkpoints = store.checkpoints()
    signed = any(c.key_id == key_id(key.public_key()) for c in checkpoints)
    # Without a checkpoint by this key, the chains alone are walked (and the table says so).
    verification = store.verify(public_key=key.public_key() if signed else None)
    observations = {
        "counts": _counts(report),
        "stripped_blocked": _stopped(report, "validate"),
        "crossings_blocked": _stopped(report, "enforce"),
        "leaks": {
            "query": "lineage_guard.lineage.queries.leaks",
            "cli": "lineage-guard lineage leaks" + _window_args(period),
            "parameters": {**period, "production_destinations": None},
            "leaks": [leak.to_dict() for leak in leaks.leaks],
            "unconfirmed": [leak.to_dict() for leak in leaks.unconfirmed],
            "blocked_attempts": len(leaks.blocked),
        },
        "chain": {
            "query": "lineage_guard.lineage.queries.verify",
            "cli": "lineage-guard lineage verify --public-key KEY --checkpoint"
            " checkpoints/LATEST.dsse.json",
            "ok": verification.ok,
            "chains": verification.chains,
            "batches": verification.batches,
            "hops": verification.hops,
            "signed_checkpoints": verification.signed_checkpoints,
            "broken": verification.broken.to_dict() if verification.broken else None,
            "key_id": key_id(key.public_key()),
            "heads": [head.to_dict() for head in store.heads()],
            "checkpoints": [
                {"seq": c.seq, "run_id": c.run_id, "at": format_time(c.at), "sha256": c.digest()}
                for c in checkpoints
            ],
        },
        "digital_source_type": _digital_source_type(report),
        "sample": _sample(store, since=since, until=until),
        "digests": {
            "suites": _suite_digests(),
            "mapping": {
                "file": "controls.json",
                "version": mapping.version,
                "sha256": mapping.sha256,
            },
        },
        "software": {
            "lineage_guard": _version(),
            "python": platform.python_version(),
            "configuration": {
                "lineage_store": store.url,  # the store's URL never holds its password
                "period": period,
                "signing_key_id": key_id(key.public_key()),
            },
        },
    }
    written: dict[str, bytes] = {"controls.json": mapping_bytes()}
    for kind, body in observations.items():
        document = {
            "kind": kind,
            "description": mapping.observation_kinds[kind],
            "basis": BASIS,
            "period": period,
            "collected": format_time(at),
            "data": body,
        }
        written[f"observations/{kind}.json"] = _json(document)
    for number, checkpoint in enumerate(checkpoints, start=1):
        name = f"checkpoints/{number:04d}-{_safe(checkpoint.run_id)}.dsse.json"
        written[name] = (
            (checkpoint.envelope + "\n").encode()
            if checkpoint.envelope is not None
            else _json(checkpoint.to_dict())  # written before checkpoints were DSSE envelopes
        )
    rows = _control_rows(mapping, observations)
    digests = {name: _sha256(data) for name, data in written.items()}
    written[OSCAL_FILE] = _json(_oscal(mapping, rows, digests, ids, since, until, at))
    for name, data in written.items():
        path = out_dir / name
        _folder(path.parent)
        write_private(path, data.decode())
    report_files = write_report(report, out_dir / "report", preface=control_table_html(rows))
    files = {name: _sha256(data) for name, data in written.items()}
    for path in report_files.values():
        files[path.relative_to(out_dir).as_posix()] = _sha256(path.read_bytes())
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": name, "digest": {"sha256": digest}} for name, digest in sorted(files.items())
        ],
        "predicateType": MANIFEST_PREDICATE,
        "predicate": {
            "mapping": {"version": mapping.version, "sha256": mapping.sha256},
            "period": period,
            "lineage_store": store.url,
            "created": format_time(at),
            "software": _version(),
            "basis": BASIS,
        },
    }
    envelope = Envelope(
        payload=canonical(statement).encode(), payload_type=PAYLOAD_TYPE, signatures={}
    )
    envelope.sign(dsse_signer(key))
    write_private(out_dir / MANIFEST, json.dumps(envelope.to_dict(), indent=2) + "\n")
    return Pack(out_dir=out_dir, files=files, rows=rows, chain_ok=verification.ok)


def verify_pack(pack_dir: Path, key: Ed25519PublicKey) -> list[str]:
    """Every problem of the pack in `pack_dir`, one line each (none: it verifies)."""
    manifest = pack_dir / MANIFEST
    try:
        envelope = Envelope.from_dict(json.loads(manifest.read_text()))
        envelope.verify([dsse_key(key)], 1)
        statement = json.loads(envelope.payload)
    except OSError as exc:
        return [f"`{manifest}` cannot be read: {exc.strerror or exc}"]
    except (VerificationError, ValueError, KeyError, TypeError, FormatError) as exc:
        return [f"`{manifest}` does not verify with the public key: {exc}"]
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != (
        MANIFEST_PREDICATE
    ):
        return [f"`{manifest}` is not a lineage-guard evidence pack manifest"]
    problems = []
    listed = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    present = {
        path.relative_to(pack_dir).as_posix()
        for path in pack_dir.rglob("*")
        if path.is_file() and path != manifest
    }
    for name in sorted(listed):
        path = pack_dir / name
        if name not in present:
            problems.append(f"`{name}` is listed in the manifest but missing")
        elif _sha256(path.read_bytes()) != listed[name]:
            problems.append(f"`{name}` differs from the SHA-256 the manifest signed: it was edited")
    problems += [
        f"`{name}` is not in the signed manifest: it was added"
        for name in sorted(present - listed.keys())
    ]
    problems += _check_checkpoints(
        pack_dir, key, sorted(n for n in listed if n.startswith("checkpoints/"))
    )
    return problems


def _check_checkpoints(pack_dir: Path, key: Ed25519PublicKey, names: Sequence[str]) -> list[str]:
    """Every checkpoint the pack holds that `key` signed verifies, and each one's predecessor
    (`previous`) is in the pack too: the export writes every checkpoint of the store."""
    problems = []
    ours: list[tuple[str, Checkpoint]] = []
    for name in names:
        try:
            checkpoint = _read_checkpoint((pack_dir / name).read_text())
        except OSError:
            continue  # reported as missing
        except (ValueError, KeyError, TypeError):
            problems.append(f"`{name}` holds no readable checkpoint")
            continue
        if checkpoint.key_id != key_id(key):
            continue  # signed by another key: it vouches for nothing here
        if not is_signed_by(checkpoint, key):
            problems.append(f"`{name}` does not verify with the public key")
            continue
        ours.append((name, checkpoint))
    digests = {checkpoint.digest() for _, checkpoint in ours}
    for name, checkpoint in ours:
        previous = checkpoint.previous
        if previous is not None and previous.sha256 not in digests:
            problems.append(
                f"`{name}` follows checkpoint {previous.seq}, which the pack does not hold"
            )
    return problems


def _read_checkpoint(text: str) -> Checkpoint:
    """A checkpoint file of the pack: a DSSE envelope, or (written before chaining) the JSON
    of `Checkpoint.to_dict`."""
    document = json.loads(text)
    if "payloadType" in document:
        return read_envelope(text.strip())
    return Checkpoint(
        at=parse_time(document["at"]),
        run_id=document["run_id"],
        heads=tuple(ChainHead(**head) for head in document["heads"]),
        key_id=document["key_id"],
        signature=document["signature"],
    )


# -- observations -------------------------------------------------------------------------


def _counts(report: Report) -> dict[str, Any]:
    tables = report.to_dict()["tables"]
    return {
        "query": "lineage_guard.lineage.report.build_report",
        "records": report.records,
        "outcomes": tables["outcomes"],
        "by_content_class": tables["by_content_class"],
        "by_class_stage": tables["by_class_stage"],
        "by_generator": tables["by_generator"],
    }


def _stopped(report: Report, stage: str) -> dict[str, Any]:
    rules = Counter({rule: n for (s, rule), n in report.reasons.items() if s == stage})
    return {
        "query": "lineage_guard.lineage.report.build_report",
        "stage": stage,
        "by_rule": dict(sorted(rules.items())),
        "records": sum(
            n for (_, s, d), n in report.by_class_stage.items() if s == stage and d != "passed"
        ),
    }


def _sample(
    store: LineageStore, *, since: datetime | None, until: datetime | None
) -> dict[str, list[dict[str, Any]]]:
    """Per outcome, the full traces of `SAMPLE_PER_OUTCOME` records: the first `SAMPLE_POOL`
    ids of the period, picked by the SHA-256 of the id (the same pack picks the same)."""
    sample: dict[str, list[dict[str, Any]]] = {}
    for outcome in Outcome:
        pool: dict[str, None] = {}
        for stored in store.scan(since=since, until=until, outcome=outcome):
            if stored.hop.record_id is not None:
                pool[stored.hop.record_id] = None
            if len(pool) >= SAMPLE_POOL:
                break
        picked = sorted(pool, key=lambda rid: hashlib.sha256(rid.encode()).hexdigest())
        sample[str(outcome)] = [
            queries.trace(store, rid).to_dict() for rid in picked[:SAMPLE_PER_OUTCOME]
        ]
    return sample


CONTRACT_SUITE = "provenance_contract.json"
DIGITAL_SOURCE_TYPE = "provenance.digital_source_type"


def _digital_source_type(report: Report) -> dict[str, Any]:
    """The contract's reading of IPTC's digital source types, from the suite itself (its
    expectations on `provenance.digital_source_type`), and the records each rule stopped."""
    suite = resources.files("lineage_guard.expectations").joinpath(CONTRACT_SUITE)
    stopped = Counter({rule: n for (s, rule), n in report.reasons.items() if s == "validate"})
    rules = []
    when_absent = None
    for expectation in json.loads(suite.read_text(encoding="utf-8"))["expectations"]:
        meta, kwargs = expectation.get("meta", {}), expectation.get("kwargs", {})
        if meta.get("field") != DIGITAL_SOURCE_TYPE:
            continue
        condition = kwargs.get("row_condition") or {}
        accepts = expectation["type"] == "expect_column_values_to_be_in_set"
        if accepts:
            when_absent = meta.get("when_absent")
        rules.append(
            {
                "rule": meta["rule"],
                "content_class": condition.get("parameter"),  # None: every class
                "accepted" if accepts else "never": kwargs["value_set"],
                "message": meta["message"],
                "stopped": stopped.get(meta["rule"], 0),
            }
        )
    return {
        "query": "lineage_guard.lineage.report.build_report",
        "suite": f"expectations/{CONTRACT_SUITE}",
        "field": DIGITAL_SOURCE_TYPE,
        "vocabulary": "http://cv.iptc.org/newscodes/digitalsourcetype/",
        "when_absent": when_absent,
        "rules": rules,
    }


def _suite_digests() -> dict[str, str]:
    folder = resources.files("lineage_guard.expectations")
    return {
        f"expectations/{entry.name}": _sha256(entry.read_bytes())
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".json")
    }


# -- the control table --------------------------------------------------------------------


def _control_rows(mapping: Mapping, observations: dict[str, Any]) -> tuple[ControlRow, ...]:
    counts = observations["counts"]
    outcomes = {row["outcome"]: row["records"] for row in counts["outcomes"]}
    stopped = observations["stripped_blocked"]["by_rule"]
    crossings = observations["crossings_blocked"]["by_rule"]
    leaks = observations["leaks"]
    chain = observations["chain"]
    rows = []
    for control in mapping.controls:
        facts = []
        kinds = set(control.observations)
        if "counts" in kinds:
            facts.append(
                f"{counts['records']} records: "
                + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
            )
        if "stripped_blocked" in kinds:
            named = sum(stopped.get(rule, 0) for rule in control.rules)
            facts.append(f"{named} violations of its rules at validate")
        if "digital_source_type" in kinds:
            found = observations["digital_source_type"]["rules"]
            facts.append(
                f"{sum(r['stopped'] for r in found)} stopped for their IPTC digital source type;"
                " none inferred when absent"
            )
        if "crossings_blocked" in kinds:
            facts.append(f"{sum(crossings.values())} crossings blocked at enforce")
        if "leaks" in kinds:
            facts.append(f"{len(leaks['leaks'])} leaks, {len(leaks['unconfirmed'])} unconfirmed")
        if "chain" in kinds:
            state = "intact" if chain["ok"] else "BROKEN"
            facts.append(f"chain {state}, {chain['signed_checkpoints']} signed checkpoints")
        finding = None
        if "leaks" in kinds and (leaks["leaks"] or leaks["unconfirmed"]):
            finding = "not satisfied: the leak query found records in production"
        if "chain" in kinds and not chain["ok"]:
            finding = f"not satisfied: {chain['broken']['description']}"
        rows.append(ControlRow(control=control, observed="; ".join(facts) or "-", finding=finding))
    return tuple(rows)


def control_table_html(rows: Sequence[ControlRow]) -> str:
    def cell(text: str) -> str:
        return f"<td>{html.escape(text)}</td>"

    body = "".join(
        "<tr>"
        + cell(f"{row.control.framework} {row.control.reference}")
        + cell(row.control.title)
        + cell(", ".join(row.control.rules + row.control.policies + row.control.queries) or "-")
        + cell(row.observed)
        + cell(row.finding or "none")
        + cell(row.control.not_covered)
        + "</tr>"
        for row in rows
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("control", "requirement", "evidenced by", "observed", "finding", "not covered")
    )
    return (
        "<h2>Controls</h2><p>Every verdict rests on the records' metadata (their provenance"
        " block): not on a watermark or forensic detection.</p>"
        f'<table class="controls"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def control_table_lines(rows: Sequence[ControlRow]) -> Iterator[list[str]]:
    for row in rows:
        yield [
            f"{row.control.framework} {row.control.reference}",
            row.observed,
            row.finding or "none",
        ]


# -- OSCAL --------------------------------------------------------------------------------


class _Ids:
    """Deterministic UUIDs: version 5, from the pack's identity and the object's name."""

    def __init__(self, identity: str) -> None:
        self.namespace = uuid.uuid5(uuid.NAMESPACE_URL, "https://lineage-guard.dev/" + identity)

    def __call__(self, name: str) -> str:
        return str(uuid.uuid5(self.namespace, name))


def _oscal(
    mapping: Mapping,
    rows: Sequence[ControlRow],
    digests: dict[str, str],
    ids: _Ids,
    since: datetime | None,
    until: datetime | None,
    at: datetime,
) -> dict[str, Any]:
    """The OSCAL assessment results, built as OSCAL JSON and checked (and written) by
    compliance-trestle's models of OSCAL 1.2.1."""
    from trestle.oscal.assessment_results import AssessmentResults

    def prop(name: str, value: str) -> dict[str, str]:
        return {"name": name, "value": value, "ns": PROPERTY_NS}

    resource_of = {name: ids(f"resource/{name}") for name in digests}
    resources_ = [
        {
            "uuid": resource_of[name],
            "title": name,
            "rlinks": [
                {
                    "href": name,
                    "media-type": "application/json",
                    "hashes": [{"algorithm": "SHA-256", "value": digest}],
                }
            ],
        }
        for name, digest in sorted(digests.items())
    ]
    observations: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    for row in rows:
        control = row.control
        mine = []
        for kind in control.observations:
            name = f"observations/{kind}.json"
            observation = {
                "uuid": ids(f"observation/{control.id}/{kind}"),
                "title": f"{control.framework} {control.reference}: {kind.replace('_', ' ')}",
                "description": mapping.observation_kinds[kind],
                "props": [prop("basis", BASIS), prop("control-id", control.id)],
                "methods": ["TEST" if kind == "chain" else "EXAMINE"],
                "types": ["control-objective"],
                "relevant-evidence": [
                    {
                        "href": f"#{resource_of[name]}",
                        "description": f"{name} (SHA-256 {digests[name]})",
                    }
                ],
                "collected": format_time(at),
            }
            observations.append(observation)
            mine.append(observation["uuid"])
        if row.finding is not None:
            findings.append(
                {
                    "uuid": ids(f"finding/{control.id}"),
                    "title": f"{control.framework} {control.reference}",
                    "description": row.finding,
                    "props": [prop("basis", BASIS)],
                    "target": {
                        "type": "objective-id",
                        "target-id": control.id,
                        "status": {"state": "not-satisfied"},
                    },
                    "related-observations": [{"observation-uuid": u} for u in mine],
                }
            )
    start, end = since or at, until or at
    result: dict[str, Any] = {
        "uuid": ids("result"),
        "title": "lineage-guard evidence for the period",
        "description": (
            f"Observations of the lineage store for {format_time(start)} to {format_time(end)},"
            f" per control of mapping `{mapping.name}` {mapping.version}. Every observation"
            " rests on the records' metadata."
        ),
        "start": format_time(start),
        "end": format_time(end),
        "props": [prop("basis", BASIS)],
        "reviewed-controls": {
            "control-selections": [
                {"include-controls": [{"control-id": row.control.id} for row in rows]}
            ]
        },
        "observations": observations,
    }
    if findings:
        result["findings"] = findings
    document = {
        "uuid": ids("assessment-results"),
        "metadata": {
            "title": "lineage-guard evidence pack",
            "last-modified": format_time(at),
            "version": mapping.version,
            "oscal-version": "1.2.1",
            "props": [prop("mapping-sha256", mapping.sha256)],
        },
        "import-ap": {
            "href": f"#{resource_of['controls.json']}",
            "remarks": "No assessment plan: the control mapping shipped with lineage-guard.",
        },
        "results": [result],
        "back-matter": {"resources": resources_},
    }
    checked = AssessmentResults.model_validate(document)
    wrapped: dict[str, Any] = json.loads(checked.oscal_serialize_json(pretty=False))
    return wrapped  # {"assessment-results": …}


# -- helpers ------------------------------------------------------------------------------


def _json(document: Any) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64]


def _window_args(period: dict[str, str | None]) -> str:
    args = ""
    if period["from"]:
        args += f" --since {period['from']}"
    if period["to"]:
        args += f" --until {period['to']}"
    return args


def _version() -> str:
    from lineage_guard import __version__

    return __version__


def _folder(path: Path) -> None:
    try:
        private_dir(path)
    except FileExistsError:
        raise UnusableInputError(f"`{path}` exists and is not a folder.") from None
    except OSError as exc:
        raise UnusableInputError(f"Cannot create `{path}`: {exc.strerror or exc}.") from None
