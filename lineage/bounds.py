"""Bounds on the text a hop row holds, so that no input can make a lineage store refuse a row.

A record's fields come from whoever produced the message: a `record_id` of 10,000 characters is
a valid Avro string, but PostgreSQL cannot index it (`index row requires 10016 bytes, maximum
size is 8191`) and would refuse the whole batch, again on every rerun. So every free-text value
a hop keeps is bounded when the hop is built (`stages.lineage_hops`), before it is hashed into
its Merkle leaf: the store keeps, and `verify` re-reads, exactly the bounded value.

A value longer than its limit is kept as its head, `...sha256:` and the SHA-256 (hex) of the
whole value's UTF-8, exactly `limit` characters in all (the head's length is what is left):

- `record_id` and each of `parent_record_ids`: 138 (a UUID has 36), so the first 64 are kept;
- `tenant_id`, `source_system`, `generator`, `content_class`, `origin_env`, a reason's rule:
  256;
- a reason's message: 1024;
- the source topic (or input file) and the pipeline name, which make the chain id: 400, 200.

Every limit keeps the worst case (4 UTF-8 bytes per character) under PostgreSQL's limit for an
index entry (2704 bytes). Values within their limit, so every hop written before, are kept as
they are: old chains still verify. Bounding is idempotent (a bounded value is within its
limit), so a parent id read back from a hop finds that parent's hops; `trace` and the parents'
class look-ups ask for an id both as given and as bounded (`lookup_ids`), so the long id finds
its record, in SQLite and PostgreSQL alike. Two different ids share a bounded form only if they
share their first 64 characters and their SHA-256.

Pure: no database driver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

ID_LIMIT = 138
TEXT_LIMIT = 256
MESSAGE_LIMIT = 1024
TOPIC_LIMIT = 400
PIPELINE_LIMIT = 200
_MARK = "...sha256:"  # ASCII: any database encoding takes it
_TAIL = len(_MARK) + 64


def bounded(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters, else its head, `...sha256:` and the SHA-256
    of all of it (`limit` characters in all)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[: limit - _TAIL]}{_MARK}{digest}"


def stored_id(record_id: str) -> str:
    """The form in which a hop row keeps `record_id` (and a parent id)."""
    return bounded(record_id, ID_LIMIT)


def digest_id(record_id: str) -> str:
    """`sha256:` and the SHA-256 of `record_id`: how the hop of a record whose row the store
    refused names it (`recorder.LineageRecorder`), in plain ASCII."""
    return "sha256:" + hashlib.sha256(record_id.encode("utf-8", "surrogatepass")).hexdigest()


def lookup_ids(record_ids: Iterable[str]) -> list[str]:
    """The ids to look up for `record_ids`: each as given, as a hop keeps it, and as the hop
    of a refused row names it."""
    found: dict[str, None] = {}
    for record_id in record_ids:
        found[record_id] = None
        found[stored_id(record_id)] = None
        found[digest_id(record_id)] = None
    return list(found)
