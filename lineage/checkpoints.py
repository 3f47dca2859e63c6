"""Signed checkpoints: the chain heads at a moment, signed with an Ed25519 key.

A guard run given `--signing-key FILE` (an Ed25519 private key in PEM, e.g. made by
`openssl genpkey -algorithm ed25519 -out guard.pem`) signs the heads of every chain in the
store when it ends, writes the checkpoint to the store and puts it into the run's OpenLineage
COMPLETE event. `lineage verify --public-key FILE` then checks each checkpoint's signature and
that every signed head is still in its chain with the signed hash: recomputing a chain's hashes
after an edit, or deleting a whole chain with its head, no longer goes unseen. Entries appended
after the last checkpoint are covered by the hash chain only.

The signature covers canonical JSON: `{"at", "heads": [{"chain_id", "hash", "seq"}…], "run_id"}`
with sorted keys, compact separators, heads sorted by chain id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lineage_guard.lineage.chain import ChainHead
from lineage_guard.lineage.errors import ConfigError
from lineage_guard.lineage.events import format_time


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    at: datetime
    run_id: str
    heads: tuple[ChainHead, ...]  # sorted by chain id
    key_id: str  # SHA-256 of the raw public key, hex: which key signed
    signature: str  # base64 Ed25519 signature over `signed_bytes`

    def signed_bytes(self) -> bytes:
        return signed_bytes(at=self.at, run_id=self.run_id, heads=self.heads)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": format_time(self.at),
            "run_id": self.run_id,
            "heads": [head.to_dict() for head in self.heads],
            "key_id": self.key_id,
            "signature": self.signature,
        }


def signed_bytes(*, at: datetime, run_id: str, heads: Iterable[ChainHead]) -> bytes:
    document = {
        "at": format_time(at),
        "run_id": run_id,
        "heads": [head.to_dict() for head in sorted(heads, key=lambda h: h.chain_id)],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(
    key: Ed25519PrivateKey, *, at: datetime, run_id: str, heads: Iterable[ChainHead]
) -> Checkpoint:
    ordered = tuple(sorted(heads, key=lambda h: h.chain_id))
    signature = key.sign(signed_bytes(at=at, run_id=run_id, heads=ordered))
    return Checkpoint(
        at=at,
        run_id=run_id,
        heads=ordered,
        key_id=key_id(key.public_key()),
        signature=base64.b64encode(signature).decode("ascii"),
    )


def is_signed_by(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


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
