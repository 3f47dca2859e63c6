"""The integrity primitives against outside references: RFC 6962's Merkle tree hash vectors
(as published with Certificate Transparency), and Ed25519 checkpoints verified by OpenSSL."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineage_guard.lineage.chain import (
    GENESIS_HASH,
    BreakKind,
    ChainHead,
    check_entry,
    hops_entry,
    verify_chain,
)
from lineage_guard.lineage.checkpoints import (
    Checkpoint,
    Previous,
    is_signed_by,
    key_id,
    load_private_key,
    sign,
    signed_bytes,
)
from lineage_guard.lineage.errors import ConfigError
from lineage_guard.lineage.events import Reason, Stage
from lineage_guard.lineage.hops import (
    Hop,
    HopBatch,
    Outcome,
    compact_json,
    merkle_root,
    stored_leaf,
)
from lineage_guard.lineage.stores.sql import hop_row

# RFC 6962 §2.1 test inputs d0…d7 and the Merkle Tree Hash of the first n of them.
LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
          "606162636465666768696a6b6c6d6e6f"]  # fmt: skip
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("size", range(1, 9))
def test_merkle_root_matches_rfc_6962_vectors(size: int) -> None:
    assert merkle_root([bytes.fromhex(leaf) for leaf in LEAVES[:size]]) == ROOTS[size - 1]


def test_merkle_leaves_are_the_standard_librarys_compact_json_for_every_code_point() -> None:
    """`compact_json` (orjson) writes exactly the bytes `json` wrote for every leaf so far."""
    stdlib = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(chars), 4096):
        text = "".join(chars[start : start + 4096])
        value = [text, 2**63 - 1, -(2**63), None, [["rule", text]], [], 0]
        assert compact_json(value) == stdlib.encode(value).encode("utf-8"), hex(start)
    # what orjson refuses goes to the standard library, as before
    assert compact_json([2**64]) == b"[18446744073709551616]"
    with pytest.raises(UnicodeEncodeError):
        compact_json(["\ud800"])


@pytest.mark.parametrize(
    "hop",
    [
        Hop(record_id="r1", source_offset=0, outcome=Outcome.DELIVERED, digest="00" * 32),
        Hop(record_id=None, source_offset=2**62, outcome=Outcome.QUARANTINED, digest="ff" * 32),
        Hop(
            record_id='räksmörgås \u2028 "q" \\ \U0001f600',
            source_offset=7,
            outcome=Outcome.BLOCKED,
            stopped_at=Stage.ENFORCE,
            reasons=(Reason(rule="leak_test_origin", message="Record `x`: \n «TEST»"),),
            content_class="SYNTHETIC",
            origin_env="TEST",
            tenant_id="acme",
            source_system="faker",
            generator="gen/model@1",
            parent_record_ids=("p1", "p\u00e9", ""),
            digest="0123456789abcdef" * 4,
        ),
    ],
)
def test_the_fast_leaf_from_stored_columns_is_the_hops_canonical_form(hop: Hop) -> None:
    """Verification's fast path hashes the stored columns without building hops: it must give
    exactly `Hop.canonical()` for every hop, or verify would call intact stores edited."""
    columns = hop_row(1, 0, hop)[2:]  # what `ROWS_OF_ENTRY` reads back, after the index
    assert stored_leaf(*columns) == hop.canonical()


def batch(*offsets: int) -> HopBatch:
    hops = tuple(
        Hop(record_id=f"r{o}", source_offset=o, outcome=Outcome.DELIVERED, digest="ab" * 32)
        for o in offsets
    )
    return HopBatch(
        pipeline="p",
        run_id="run",
        at=T0,
        source_topic="t",
        source_partition=0,
        allowed_to="out",
        quarantined_to="q",
        hops=hops,
    )


def test_entries_link_and_each_break_is_named() -> None:
    first = hops_entry(batch(0, 1), head=None)
    second = hops_entry(batch(2), head=ChainHead(chain_id="p/t/0", seq=1, hash=first.hash))
    assert (first.seq, first.prev_hash, second.seq, second.prev_hash) == (
        1,
        GENESIS_HASH,
        2,
        first.hash,
    )
    rows = {1: list(batch(0, 1).hops), 2: list(batch(2).hops)}
    head = ChainHead(chain_id="p/t/0", seq=2, hash=second.hash)

    def rows_of(entry):  # type: ignore[no-untyped-def]
        return rows[entry.seq]

    found, batches, hops, _ = verify_chain("p/t/0", [first, second], head, rows_of)
    assert (found, batches, hops) == (None, 2, 3)

    edited = dataclasses.replace(rows[1][0], tenant_id="globex")
    broken, _ = check_entry(
        first, expected_seq=1, prev_hash=GENESIS_HASH, rows_of=lambda e: [edited, rows[1][1]]
    )
    assert broken is not None and broken.kind is BreakKind.EDITED
    swapped, _ = check_entry(
        first, expected_seq=1, prev_hash=GENESIS_HASH, rows_of=lambda e: rows[1][::-1]
    )
    assert swapped is not None and swapped.kind is BreakKind.EDITED
    relinked = dataclasses.replace(second, prev_hash="1" * 64)
    found, *_ = verify_chain("p/t/0", [first, relinked], head, rows_of)
    assert found is not None and found.kind is BreakKind.RELINKED
    found, *_ = verify_chain("p/t/0", [second], head, rows_of)
    assert found is not None and found.kind is BreakKind.DELETED and found.seq == 1


def test_checkpoints_verify_with_openssl(tmp_path: Path) -> None:
    """Our checkpoint is a DSSE envelope: a plain Ed25519 signature over the DSSE
    pre-authentication encoding of an in-toto Statement, built here by hand from the DSSE
    spec; OpenSSL, an implementation we do not share code with, verifies it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed for this reference check (Debian package openssl)")
    key_file = tmp_path / "guard.pem"
    subprocess.run([openssl, "genpkey", "-algorithm", "ed25519", "-out", str(key_file)], check=True)
    subprocess.run(
        [openssl, "pkey", "-in", str(key_file), "-pubout", "-out", str(tmp_path / "guard.pub")],
        check=True,
    )
    key = load_private_key(key_file)
    checkpoint = sign(
        key, at=T0, run_id="run-1", heads=[ChainHead(chain_id="p/t/0", seq=4, hash="cd" * 32)]
    )
    assert checkpoint.envelope is not None
    envelope = json.loads(checkpoint.envelope)
    payload = base64.b64decode(envelope["payload"])
    kind = envelope["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)
    (tmp_path / "signed.bin").write_bytes(pae)
    [signature] = envelope["signatures"]
    assert signature["keyid"] == checkpoint.key_id
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(signature["sig"]))
    verified = subprocess.run(
        [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "guard.pub"),
         "-rawin", "-in", str(tmp_path / "signed.bin"), "-sigfile", str(tmp_path / "sig.bin")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Signature Verified Successfully" in verified.stdout
    assert json.loads(payload) == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "lineage-chain:p/t/0", "digest": {"sha256": "cd" * 32}}],
        "predicateType": "https://lineage-guard.dev/attestations/checkpoint/v1",
        "predicate": {
            "at": "2026-11-27T12:00:00.000Z",
            "run_id": "run-1",
            "seq": 1,
            "previous": None,
            "heads": [{"chain_id": "p/t/0", "seq": 4, "hash": "cd" * 32}],
        },
    }
    assert checkpoint.digest() == hashlib.sha256(payload).hexdigest()
    following = sign(key, at=T0, run_id="run-2", heads=[], previous=checkpoint)
    assert (following.seq, following.previous) == (2, Previous(seq=1, sha256=checkpoint.digest()))
    assert is_signed_by(checkpoint, key.public_key())
    forged = envelope | {"payload": base64.b64encode(payload.replace(b"run-1", b"run-9")).decode()}
    tampered = dataclasses.replace(checkpoint, envelope=json.dumps(forged))
    assert not is_signed_by(tampered, key.public_key())


def test_checkpoints_written_before_chaining_still_verify() -> None:
    """A checkpoint of the earlier form: a bare Ed25519 signature over canonical JSON."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    heads = (ChainHead(chain_id="p/t/0", seq=4, hash="cd" * 32),)
    bare = signed_bytes(at=T0, run_id="run-1", heads=heads)
    assert bare == (
        b'{"at":"2026-11-27T12:00:00.000Z","heads":[{"chain_id":"p/t/0","hash":"'
        + b"cd" * 32
        + b'","seq":4}],"run_id":"run-1"}'
    )
    old = Checkpoint(
        at=T0,
        run_id="run-1",
        heads=heads,
        key_id=key_id(key.public_key()),
        signature=base64.b64encode(key.sign(bare)).decode(),
    )
    assert is_signed_by(old, key.public_key())
    assert not is_signed_by(dataclasses.replace(old, run_id="run-2"), key.public_key())
    assert old.digest() == hashlib.sha256(bare).hexdigest()


def test_a_key_that_is_not_ed25519_is_a_config_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "ec.pem"
    path.write_bytes(pem)
    path.chmod(0o600)  # a key others may read is refused before its type is looked at
    with pytest.raises(ConfigError, match="not an Ed25519 private key"):
        load_private_key(path)
    with pytest.raises(ConfigError, match="Cannot read the signing key"):
        load_private_key(tmp_path / "missing.pem")


def test_leaves_that_give_the_root_spare_reading_rows_and_others_fall_back_to_them() -> None:
    written = batch(0, 1)
    entry = hops_entry(written, head=None)
    leaves = [hop.canonical() for hop in written.hops]

    def no_rows(e):  # type: ignore[no-untyped-def]
        raise AssertionError("rows read although the leaves gave the root")

    assert check_entry(
        entry, expected_seq=1, prev_hash=GENESIS_HASH, rows_of=no_rows, leaves_of=lambda e: leaves
    ) == (None, 2)
    edited = dataclasses.replace(written.hops[0], tenant_id="globex")
    for fast in ([edited.canonical(), leaves[1]], None, leaves[:1]):
        broken, _ = check_entry(
            entry,
            expected_seq=1,
            prev_hash=GENESIS_HASH,
            rows_of=lambda e: [edited, written.hops[1]],
            leaves_of=lambda e, fast=fast: fast,  # type: ignore[misc]
        )
        assert broken is not None and broken.kind is BreakKind.EDITED
