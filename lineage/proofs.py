"""Inclusion proofs for a trace: a batch read whole once is then checked by the hops that
matter, not by all its rows again (`SqlStore.verify_batches(..., rows=...)`).

When a trace reads a batch whole and its rows give the entry's Merkle root, `BatchTrees` keeps
the batch's tree cut at PROOF_HEIGHT levels above the leaves (one node per aligned block of
2^PROOF_HEIGHT rows: 125 nodes, 4 KB, for 2,000 hops), under the entry's hash. A later trace of
that batch, its entry's link and hash checked again, reads only the blocks of its hops and
hashes each into a node: equal to the kept node, the hop's row is the one under the entry's
Merkle root (the kept nodes lead to that root). What it does not see is an edit of another
block since the batch was read whole: `lineage verify` and the console's verification read
every row.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from lineage_guard.lineage.chain import Entry
from lineage_guard.lineage.hops import merkle_nodes, merkle_root_of

PROOF_HEIGHT = 4  # a proof reads the 16 rows of its hop's block
NODE = 32  # bytes of a SHA-256 node
KEPT_BATCHES = 10_000  # trees kept per store object (4 KB each at 2,000 hops a batch)

# The rows `first <= idx < end` of an entry, read now: their indexes, and their leaves (None if
# a row holds a value no written hop has).
ReadBlock = Callable[[int, int], tuple[list[int], list[bytes] | None]]


@dataclass(frozen=True)
class _Tree:
    hash: str  # the entry's, when its rows were read whole
    nodes: bytes  # the tree's nodes PROOF_HEIGHT levels up, NODE bytes each
    read_at: datetime


class BatchTrees:
    """The cut Merkle trees of the batches read whole and found intact, newest used kept."""

    def __init__(self, limit: int = KEPT_BATCHES) -> None:
        self._trees: OrderedDict[tuple[str, int], _Tree] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def keep(self, entry: Entry, leaves: list[bytes]) -> None:
        """Keep the tree of `entry`'s `leaves` (read whole just now) if they give its root."""
        nodes = merkle_nodes(leaves, PROOF_HEIGHT)
        if not nodes or merkle_root_of(nodes) != entry.root:
            return
        tree = _Tree(hash=entry.hash, nodes=b"".join(nodes), read_at=datetime.now(UTC))
        with self._lock:
            self._trees[(entry.chain_id, entry.seq)] = tree
            self._trees.move_to_end((entry.chain_id, entry.seq))
            while len(self._trees) > self._limit:
                self._trees.popitem(last=False)

    def prove(self, entry: Entry, indexes: Collection[int], read: ReadBlock) -> datetime | None:
        """When `entry`'s batch was read whole, if the hops at `indexes` are proven under its
        root by their blocks (`read`); None: not proven (read the batch whole)."""
        key = (entry.chain_id, entry.seq)
        with self._lock:
            tree = self._trees.get(key)
            if tree is not None:
                self._trees.move_to_end(key)
        if tree is None or tree.hash != entry.hash or not indexes:
            return None
        size = 1 << PROOF_HEIGHT
        for block in sorted({index // size for index in indexes}):
            first, end = block * size, min(block * size + size, entry.count)
            if not 0 <= first < end:
                return None
            found_at, found = read(first, block * size + size)
            if found is None or found_at != list(range(first, end)):
                return None  # an edited value, or a row deleted, inserted or moved
            if merkle_nodes(found, PROOF_HEIGHT) != [
                tree.nodes[block * NODE : block * NODE + NODE]
            ]:
                return None
        return tree.read_at
