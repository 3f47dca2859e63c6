"""The write step's lineage: hops before the records are produced, deliveries after.

`LineageRecorder` is the one place the pipeline writes to a `LineageStore`:

1. `record(batch)` writes the batch's hops (what the guard decided, where each record is
   going) before any of its records is produced. If that fails, nothing is produced and no
   offset is committed: the guard fails closed.
2. `confirm(...)` writes, once the destination answered (Kafka delivery reports, a flushed
   file), which records it acknowledged and which it refused, before their offsets are
   committed. Until then `trace` shows those records as `sending`, never as `delivered`: the
   store never claims a delivery that did not happen.

Store errors fall in three kinds:

- transient (`ServiceUnavailableError`: the database unreachable, restarting, its disk full):
  the store is opened lazily, inside a retry loop, and retried for up to `retry_s` seconds
  with a line on stderr each time, delivering nothing meanwhile; then exit 4;
- permanent for a record (`RowRefusedError`: a row holds a value the store cannot take, e.g.
  a character the database's encoding lacks): the rows it refuses are found
  (`LineageStore.refused_rows`), those records go to quarantine with the rule
  `lineage_refused` and a hop that keeps only their position, digests and that reason, and
  the partition moves on. Hop rows keep unbounded fields bounded (`lineage.bounds`), so
  length alone never gets here;
- permanent for the run (`ConfigError`: a read-only or non-database file, a refused login,
  no privilege; or a batch refused with no row to blame): raised at once, exit 3.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lineage_guard import guard_chain
from lineage_guard.arrow_batch import GuardBatch
from lineage_guard.contract.verdicts import Violation
from lineage_guard.lineage.bounds import bounded, digest_id
from lineage_guard.lineage.chain import Entry, Failure
from lineage_guard.lineage.errors import RowRefusedError, ServiceUnavailableError
from lineage_guard.lineage.events import Reason, Stage
from lineage_guard.lineage.hops import Hop, HopBatch, Outcome

if TYPE_CHECKING:
    from lineage_guard.lineage.checkpoints import Checkpoint

log = logging.getLogger(__name__)


class RetryingStore:
    """A lineage store opened lazily and, while it is unreachable, retried for up to `retry_s`
    seconds (backing off to 10 s) before `ServiceUnavailableError` ends the run."""

    def __init__(self, store_url: str, *, retry_s: float) -> None:
        self.store_url = store_url
        self.retry_s = retry_s
        self.store: Any = None  # opened at the first call, inside the retry loop

    def call(self, use: Callable[[Any], Any], stop: Callable[[], bool] = lambda: False) -> Any:
        """`use(store)`, retried while the store is unreachable; `_Stopped` when `stop()`
        turns true during a wait."""
        from lineage_guard.lineage.store import open_store

        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while True:
            try:
                if self.store is None:
                    self.store = open_store(self.store_url)
                return use(self.store)
            except ServiceUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    raise ServiceUnavailableError(
                        f"{exc.message} Gave up after {self.retry_s:.0f} s: the records it "
                        "covers were not delivered and their offsets not committed."
                    ) from exc
                log.warning("lineage store unavailable, retrying in %.1f s: %s", delay, exc.message)
                until = time.monotonic() + delay
                while time.monotonic() < until:  # wake up for a stop signal
                    if stop():
                        raise _Stopped from None
                    time.sleep(min(0.2, max(until - time.monotonic(), 0)))
                delay = min(delay * 2, 10.0)

    def content_classes(
        self, record_ids: Iterable[str], stop: Callable[[], bool] = lambda: False
    ) -> dict[str, str]:
        """The recorded class of each of `record_ids` the store knows (parents recorded by
        any worker, round or run); an outage is waited out, as the write step waits it out."""
        ids = list(record_ids)
        found: dict[str, str] = self.call(lambda store: store.content_classes(ids), stop)
        return found

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


LINEAGE_REFUSED = "lineage_refused"  # the store refused the record's hop row


@dataclass(frozen=True, kw_only=True)
class Recorded:
    """A recorded batch: its chain entry (to `confirm` once the destination answered) and the
    batch to deliver, in which the records whose rows the store refused are quarantined."""

    entry: Entry
    batch: GuardBatch


class LineageRecorder:
    def __init__(self, store_url: str, *, pipeline: str, run_id: str, retry_s: float) -> None:
        self.store_url = store_url
        self.pipeline = pipeline
        self.run_id = run_id
        self.retry_s = retry_s
        self.connection = RetryingStore(store_url, retry_s=retry_s)

    def record(
        self,
        batch: GuardBatch,
        *,
        allowed_to: str,
        quarantined_to: str,
        stop: Callable[[], bool] = lambda: False,
    ) -> Recorded | None:
        """Record what the stages decided about `batch`, and where its records are going.
        None when `stop()` turned true while an unavailable store was being retried: nothing
        was recorded, and the batch must not be delivered."""
        hops = guard_chain.hop_batch(
            batch,
            pipeline=self.pipeline,
            run_id=self.run_id,
            allowed_to=allowed_to,
            quarantined_to=quarantined_to,
        )
        try:
            try:
                entry: Entry = self.connection.call(lambda store: store.append(hops), stop)
            except RowRefusedError as exc:
                batch, hops = self._quarantine_refused(batch, hops, exc, stop)
                entry = self.connection.call(lambda store: store.append(hops), stop)
        except _Stopped:
            return None
        return Recorded(entry=entry, batch=batch)

    def _quarantine_refused(
        self, batch: GuardBatch, hops: HopBatch, refusal: RowRefusedError, stop: Callable[[], bool]
    ) -> tuple[GuardBatch, HopBatch]:
        """`batch` and `hops` with each record whose row the store refuses quarantined
        (`lineage_refused`), its hop reduced to what any store takes."""
        refused: dict[int, str] = self.connection.call(lambda store: store.refused_rows(hops), stop)
        if not refused:  # the batch, not a row: nothing to quarantine it by
            raise refusal
        rows = list(hops.all_hops())
        found: dict[int, Violation] = {}
        for index, error in refused.items():
            message = (
                f"The lineage store refused this record's hop ({error}); its hop keeps only"
                " its source position and digest."
            )
            message = bounded(message.encode("ascii", "backslashreplace").decode(), 1024)
            found[index] = Violation(rule=LINEAGE_REFUSED, column=None, message=message)
            log.warning(
                "lineage store refused the hop of `%s`[%d]@%d: quarantined (%s)",
                batch.topic,
                batch.partition,
                rows[index].source_offset,
                error,
            )
        batch = guard_chain.refuse(batch, found)
        stopped = batch.stopped_at()
        for index in refused:
            hop = rows[index]
            rows[index] = Hop(
                record_id=digest_id(hop.record_id) if hop.record_id is not None else None,
                source_offset=hop.source_offset,
                outcome=Outcome.BLOCKED if hop.outcome is Outcome.BLOCKED else Outcome.QUARANTINED,
                stopped_at=Stage(stopped[index] or Stage.WRITE),
                reasons=(Reason(rule=LINEAGE_REFUSED, message=found[index].message),),
                digest=hop.digest,
            )
        return batch, dataclasses.replace(hops, hops=tuple(rows), rows=None)

    def confirm(self, answered: Sequence[tuple[Entry, int, Sequence[Failure]]]) -> None:
        """Record, per batch entry, how many records the destination answered and which it
        refused (source offset, error)."""
        if answered:
            at = datetime.now(UTC)
            self.connection.call(lambda store: store.confirm(answered, at=at))

    def sign(self, key: Any) -> Checkpoint:
        """Sign the heads of every chain in the store (`lineage.checkpoints`), chained after
        the key's latest checkpoint there, and keep the checkpoint there too."""
        from lineage_guard.lineage.checkpoints import latest, sign

        def make(checkpoints: list[Checkpoint], heads: list[Any]) -> Checkpoint:
            return sign(
                key,
                at=datetime.now(UTC),
                run_id=self.run_id,
                heads=heads,
                previous=latest(checkpoints, key.public_key()),
            )

        checkpoint: Checkpoint = self.connection.call(lambda store: store.add_next_checkpoint(make))
        return checkpoint

    def close(self) -> None:
        self.connection.close()


class _Stopped(Exception):
    """A stop signal arrived while the store was being retried (never leaves this module)."""
