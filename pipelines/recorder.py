"""The write step's lineage: a batch's lineage is recorded before its records are produced.

`LineageRecorder` is the one place the pipeline writes to a `LineageStore`. It opens the store
lazily, inside its retry loop, and retries an unreachable store for up to `retry_s` seconds,
delivering nothing meanwhile (a store that refuses its settings, e.g. a read-only or
non-database file, raises `ConfigError` at once: waiting would not help): if lineage cannot be
recorded, the records it covers are not produced and their offsets are not committed (the
guard fails closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from lineage_guard import stages
from lineage_guard.items import Batch
from lineage_guard.lineage.errors import ServiceUnavailableError

log = logging.getLogger(__name__)


class LineageRecorder:
    def __init__(self, store_url: str, *, pipeline: str, run_id: str, retry_s: float) -> None:
        self.store_url = store_url
        self.pipeline = pipeline
        self.run_id = run_id
        self.retry_s = retry_s
        self.store: Any = None  # opened at the first write, inside the retry loop

    def record(
        self,
        batch: Batch,
        *,
        allowed_to: str,
        quarantined_to: str,
        stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Record what the stages decided about `batch`, and where its records are going.

        False when `stop()` turned true while an unavailable store was being retried: then
        nothing was recorded, and the batch must not be delivered."""
        events = stages.lineage_events(
            batch,
            pipeline=self.pipeline,
            run_id=self.run_id,
            allowed_to=allowed_to,
            quarantined_to=quarantined_to,
        )
        first = batch.items[0].source.offset
        # One chain per batch: `trace` verifies a chain of one batch, not of a whole run.
        chain_id = f"{self.run_id}/{batch.topic}/{batch.partition}/{first}"
        return self._retrying(lambda store: store.append(events, chain_id=chain_id), stop)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _retrying(self, write: Callable[[Any], None], stop: Callable[[], bool]) -> bool:
        from lineage_guard.lineage.store import open_store

        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while True:
            try:
                if self.store is None:
                    self.store = open_store(self.store_url)
                write(self.store)
                return True
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
                        return False
                    time.sleep(min(0.2, max(until - time.monotonic(), 0)))
                delay = min(delay * 2, 10.0)
