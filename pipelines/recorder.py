"""The write step's lineage: hops before the records are produced, deliveries after.

`LineageRecorder` is the one place the pipeline writes to a `LineageStore`:

1. `record(batch)` writes the batch's hops (what the guard decided, where each record is
   going) before any of its records is produced. If that fails, nothing is produced and no
   offset is committed: the guard fails closed.
2. `confirm(...)` writes, once the destination answered (Kafka delivery reports, a flushed
   file), which records it acknowledged and which it refused, before their offsets are
   committed. Until then `trace` shows those records as `sending`, never as `delivered`: the
   store never claims a delivery that did not happen.

It opens the store lazily, inside its retry loop, and retries an unreachable store for up to
`retry_s` seconds, delivering nothing meanwhile. A store that refuses its settings (a
read-only or non-database file, a refused login) raises `ConfigError` at once: waiting would
not help.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lineage_guard import stages
from lineage_guard.items import Batch
from lineage_guard.lineage.chain import Entry, Failure
from lineage_guard.lineage.errors import ServiceUnavailableError

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


class LineageRecorder:
    def __init__(self, store_url: str, *, pipeline: str, run_id: str, retry_s: float) -> None:
        self.store_url = store_url
        self.pipeline = pipeline
        self.run_id = run_id
        self.retry_s = retry_s
        self.connection = RetryingStore(store_url, retry_s=retry_s)

    def record(
        self,
        batch: Batch,
        *,
        allowed_to: str,
        quarantined_to: str,
        stop: Callable[[], bool] = lambda: False,
    ) -> Entry | None:
        """Record what the stages decided about `batch`, and where its records are going;
        returns the chain entry to `confirm` once the destination answered. None when
        `stop()` turned true while an unavailable store was being retried: nothing was
        recorded, and the batch must not be delivered."""
        hops = stages.lineage_hops(
            batch,
            pipeline=self.pipeline,
            run_id=self.run_id,
            allowed_to=allowed_to,
            quarantined_to=quarantined_to,
        )
        try:
            entry: Entry = self.connection.call(lambda store: store.append(hops), stop)
        except _Stopped:
            return None
        return entry

    def confirm(self, answered: Sequence[tuple[Entry, int, Sequence[Failure]]]) -> None:
        """Record, per batch entry, how many records the destination answered and which it
        refused (source offset, error)."""
        if answered:
            at = datetime.now(UTC)
            self.connection.call(lambda store: store.confirm(answered, at=at))

    def sign(self, key: Any) -> Checkpoint:
        """Sign the heads of every chain in the store (`lineage.checkpoints`) and keep the
        checkpoint there too."""
        from lineage_guard.lineage.checkpoints import sign

        def write(store: Any) -> Checkpoint:
            checkpoint = sign(key, at=datetime.now(UTC), run_id=self.run_id, heads=store.heads())
            store.add_checkpoint(checkpoint)
            return checkpoint

        checkpoint: Checkpoint = self.connection.call(write)
        return checkpoint

    def close(self) -> None:
        self.connection.close()


class _Stopped(Exception):
    """A stop signal arrived while the store was being retried (never leaves this module)."""
