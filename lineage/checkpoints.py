"""Signed checkpoints: the chain heads at a moment, signed with an Ed25519 key, each one
chained to the one before.

A guard run given `--signing-key FILE` (an Ed25519 private key in PEM, e.g. made by
`openssl genpkey -algorithm ed25519 -out guard.pem`) signs the heads of every chain in the
store when it ends, writes the checkpoint to the store, puts it into the run's OpenLineage
COMPLETE event and, with `--checkpoint-out FILE`, into a file: copies the store's writer cannot
rewrite. `lineage verify --public-key FILE` then checks each checkpoint's signature, that every
signed head is still in its chain with the signed hash, and that every checkpoint's
predecessor is still in the store; `--checkpoint COPY` also proves the store still extends the
checkpoint the auditor holds. Rolling the store back (deleting the newest run's entries, hops
and checkpoint, rewinding the heads) or rewriting it (recomputing a chain after an edit and
deleting the newest checkpoint) is seen only against such a copy: inside the store, the newest
checkpoint can go with the entries it signed. Entries appended after the last checkpoint are
covered by the hash chain only.

The form is standard: an in-toto Statement v1 (`_type`, `subject`, `predicateType`,
`predicate`) in a DSSE envelope (payload type `application/vnd.in-toto+json`) signed with the
Ed25519 key; any DSSE verifier (securesystemslib, the in-toto reference implementation) checks
it. The subjects are the chain heads (name `lineage-chain:CHAIN_ID`, digest `sha256`: the head
entry's hash, the SHA-256 of its `prev_hash` and header); the predicate
(`CHECKPOINT_PREDICATE`) holds `at`, `run_id`, `seq` (1, 2, … per key), `previous` (the
`seq` and `sha256` of the previous checkpoint by the same key, or null) and `heads`. A
checkpoint's digest is the SHA-256 of the bytes it signed: the Statement payload.

Checkpoints written before chaining (`seq` None) signed canonical JSON
`{"at", "heads": [{"chain_id", "hash", "seq"}…], "run_id"}` (sorted keys, compact separators,
heads by chain id) with a bare base64 signature; they still verify, and count in the sequence.
In the store, the `signature` column holds the DSSE envelope (JSON) of a chained checkpoint,
the bare signature of an earlier one.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lineage_guard.lineage.chain import ChainHead
from lineage_guard.lineage.errors import ConfigError, UnusableInputError
from lineage_guard.lineage.events import format_time, parse_time

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner, SSlibKey

# securesystemslib is imported where an envelope is made or read, not with this module: it
# imports boto3 (about half a second), which a guard run without a signing key never needs.

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
CHECKPOINT_PREDICATE = "https://lineage-guard.dev/attestations/checkpoint/v1"
SUBJECT_PREFIX = "lineage-chain:"


@dataclass(frozen=True, kw_only=True)
class Previous:
    """What a checkpoint commits to: the previous checkpoint by the same key."""

    seq: int
    sha256: str  # that checkpoint's digest

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "sha256": self.sha256}


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    at: datetime
    run_id: str
    heads: tuple[ChainHead, ...]  # sorted by chain id
    key_id: str  # SHA-256 of the raw public key, hex: which key signed
    signature: str  # base64 Ed25519 signature (over `signed_bytes`, or the DSSE PAE)
    seq: int | None = None  # None: written before checkpoints were chained
    previous: Previous | None = None
    envelope: str | None = None  # the DSSE envelope (JSON) of a chained checkpoint

    def signed_bytes(self) -> bytes:
        if self.envelope is not None:
            from securesystemslib.dsse import Envelope

            return Envelope.from_dict(json.loads(self.envelope)).payload
        return signed_bytes(at=self.at, run_id=self.run_id, heads=self.heads)

    def digest(self) -> str:
        """The SHA-256 of the bytes the checkpoint signed: how the next one names it."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "at": format_time(self.at),
            "run_id": self.run_id,
            "heads": [head.to_dict() for head in self.heads],
            "key_id": self.key_id,
            "signature": self.signature,
        }
        if self.envelope is not None:
            document["seq"] = self.seq
            document["previous"] = self.previous.to_dict() if self.previous else None
            document["envelope"] = json.loads(self.envelope)
        return document

    def describe(self) -> str:
        number = f"checkpoint {self.seq}" if self.seq is not None else "the checkpoint"
        return f"{number} of run `{self.run_id}` ({format_time(self.at)})"


def signed_bytes(*, at: datetime, run_id: str, heads: Iterable[ChainHead]) -> bytes:
    document = {
        "at": format_time(at),
        "run_id": run_id,
        "heads": [head.to_dict() for head in sorted(heads, key=lambda h: h.chain_id)],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def statement(
    *, at: datetime, run_id: str, seq: int, previous: Previous | None, heads: Iterable[ChainHead]
) -> dict[str, Any]:
    """The in-toto Statement v1 a checkpoint signs."""
    ordered = sorted(heads, key=lambda h: h.chain_id)
    subjects = [
        {"name": SUBJECT_PREFIX + head.chain_id, "digest": {"sha256": head.hash}}
        for head in ordered
    ]
    if not subjects:  # a Statement names at least one subject: the empty set of heads
        empty = hashlib.sha256(b"[]").hexdigest()
        subjects = [{"name": SUBJECT_PREFIX, "digest": {"sha256": empty}}]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": CHECKPOINT_PREDICATE,
        "predicate": {
            "at": format_time(at),
            "run_id": run_id,
            "seq": seq,
            "previous": previous.to_dict() if previous else None,
            "heads": [head.to_dict() for head in ordered],
        },
    }


def sign(
    key: Ed25519PrivateKey,
    *,
    at: datetime,
    run_id: str,
    heads: Iterable[ChainHead],
    previous: Checkpoint | None = None,
) -> Checkpoint:
    """A checkpoint of `heads`, chained after `previous` (the latest checkpoint this key
    signed in the store, `latest`; None for the first), as a signed DSSE envelope."""
    ordered = tuple(sorted(heads, key=lambda h: h.chain_id))
    link = None
    if previous is not None:
        if previous.seq is None:
            raise ValueError("a checkpoint written before chaining needs its position: use latest")
        link = Previous(seq=previous.seq, sha256=previous.digest())
    seq = link.seq + 1 if link else 1
    payload = canonical(
        statement(at=at, run_id=run_id, seq=seq, previous=link, heads=ordered)
    ).encode()
    from securesystemslib.dsse import Envelope

    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(dsse_signer(key))
    return read_envelope(canonical(envelope.to_dict()))


def dsse_signer(key: Ed25519PrivateKey) -> CryptoSigner:
    """`key` as a securesystemslib signer whose key id is ours (`key_id`)."""
    from securesystemslib.signer import CryptoSigner

    return CryptoSigner(key, dsse_key(key.public_key()))


def dsse_key(key: Ed25519PublicKey) -> SSlibKey:
    from securesystemslib.signer import SSlibKey

    return SSlibKey.from_crypto(key, keyid=key_id(key))


def read_envelope(text: str) -> Checkpoint:
    """The checkpoint in DSSE envelope `text`, as written by `sign` (not yet verified);
    `ValueError` when it is no such envelope."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import FormatError

    try:
        document = json.loads(text)
        envelope = Envelope.from_dict(copy.deepcopy(document))
        if envelope.payload_type != PAYLOAD_TYPE or len(envelope.signatures) != 1:
            raise ValueError("not one signature over an in-toto payload")
        body = json.loads(envelope.payload)
        if body.get("_type") != STATEMENT_TYPE or body.get("predicateType") != (
            CHECKPOINT_PREDICATE
        ):
            raise ValueError("not a lineage-guard checkpoint statement")
        predicate = body["predicate"]
        previous = predicate["previous"]
        [signature] = envelope.signatures.values()
        return Checkpoint(
            at=parse_time(predicate["at"]),
            run_id=str(predicate["run_id"]),
            heads=tuple(
                ChainHead(chain_id=str(h["chain_id"]), seq=int(h["seq"]), hash=str(h["hash"]))
                for h in predicate["heads"]
            ),
            key_id=signature.keyid,
            signature=base64.b64encode(bytes.fromhex(signature.signature)).decode("ascii"),
            seq=int(predicate["seq"]),
            previous=Previous(seq=int(previous["seq"]), sha256=str(previous["sha256"]))
            if previous is not None
            else None,
            envelope=text,
        )
    except (ValueError, TypeError, KeyError, AttributeError, FormatError) as exc:
        raise ValueError(f"not a signed checkpoint envelope: {exc}") from None


def is_signed_by(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    if checkpoint.envelope is not None:
        from securesystemslib.dsse import Envelope
        from securesystemslib.exceptions import FormatError, VerificationError

        try:
            envelope = Envelope.from_dict(json.loads(checkpoint.envelope))
            envelope.verify([dsse_key(key)], 1)
        except (VerificationError, ValueError, KeyError, TypeError, FormatError):
            return False
        return True
    try:
        key.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


def latest(checkpoints: Sequence[Checkpoint], key: Ed25519PublicKey) -> Checkpoint | None:
    """The newest of `checkpoints` (in store order) signed by `key`, with its `seq` (for one
    written before chaining: its position among that key's checkpoints); None if none."""
    ours = [c for c in checkpoints if c.key_id == key_id(key)]
    if not ours:
        return None
    last = ours[-1]
    return last if last.seq is not None else dataclasses.replace(last, seq=len(ours))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint an auditor holds, in file `path`: a DSSE envelope (`--checkpoint-out`,
    `evidence export`), or an OpenLineage run event carrying the `lineageGuard_checkpoint`
    facet. Not yet verified."""
    data = _read(path, "checkpoint")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise UnusableInputError(f"`{path}` is not JSON ({_first(exc)}).") from None
    if isinstance(document, dict) and isinstance(document.get("run"), dict):
        facet = (document["run"].get("facets") or {}).get("lineageGuard_checkpoint")
        if not isinstance(facet, dict):
            raise UnusableInputError(
                f"`{path}` is an OpenLineage event without a `lineageGuard_checkpoint` facet:"
                " take the COMPLETE event of a run given `--signing-key`."
            )
        if "envelope" not in facet:  # a checkpoint written before chaining
            try:
                return Checkpoint(
                    at=parse_time(facet["at"]),
                    run_id=facet["runId"],
                    heads=tuple(ChainHead(**head) for head in facet["heads"]),
                    key_id=facet["keyId"],
                    signature=facet["signature"],
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise UnusableInputError(
                    f"`{path}` holds no readable checkpoint ({exc})."
                ) from None
        document = facet["envelope"]
    try:
        return read_envelope(json.dumps(document))
    except ValueError as exc:
        raise UnusableInputError(
            f"`{path}` holds no checkpoint ({exc}). Give the file `run --checkpoint-out` wrote,"
            " or the run's OpenLineage COMPLETE event."
        ) from None


def canonical(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file `path`; `ConfigError` for anything else, and for a
    key file others may read (group or other permission bits set): refused, as `ssh` refuses
    such a private key, since whoever can read it can sign checkpoints as the guard."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise ConfigError(f"Cannot read the signing key `{path}`: {exc.strerror or exc}.") from None
    if mode & 0o077:
        raise ConfigError(
            f"The signing key `{path}` is readable by others (mode {mode:04o}): it was not used."
            f" Make it private with `chmod 600 {path}`."
        )
    data = _read(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"`{path}` is not an unencrypted PEM private key ({_first(exc)}). Make one with"
            " `openssl genpkey -algorithm ed25519 -out guard.pem`."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"`{path}` is a {type(key).__name__}, not an Ed25519 private key.")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM file `path` (a private key file is accepted too)."""
    data = _read(path, "public key")
    try:
        key: Any = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"`{path}` is not a PEM public key ({_first(exc)}). Export one with"
                " `openssl pkey -in guard.pem -pubout -out guard.pub`."
            ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"`{path}` is a {type(key).__name__}, not an Ed25519 public key.")
    return key


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read the {what} `{path}`: {exc.strerror or exc}.") from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
