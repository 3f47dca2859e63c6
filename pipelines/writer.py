"""The write step, one for every mode: lineage first, then the records, then what the
destination answered.

`Writer.write(batch)`:

1. the sink places every record where it fits (`KafkaSink.prepare`: a record too large for
   its topic is quarantined, before its lineage says where it goes);
2. the batch's hops are recorded (`LineageRecorder.record`): if the store cannot take them,
   nothing is written (fail closed); a row the store refuses quarantines its record;
3. the sink writes the records; once the destination answered (Kafka delivery reports, a
   flushed file), the recorder confirms the deliveries, before any offset is committed.

The bounded graph's `WriteGuarded` and the streaming job's `DeliverAndCommit` both write
through it; they differ only in who commits Kafka offsets (the sink, or the streaming job
from keyed state).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apache_beam.metrics import Metrics

from lineage_guard.arrow_batch import GuardBatch
from lineage_guard.contract.records import provenance_of
from lineage_guard.io.file_io import FileSink
from lineage_guard.io.kafka import KafkaSink
from lineage_guard.recorder import LineageRecorder

NAMESPACE = "lineage_guard"
progress = logging.getLogger("lineage_guard.progress")


@dataclass(frozen=True, kw_only=True)
class Lineage:
    """Where `WriteGuarded` records its hop: the store, the stage name it shows under, and the
    run (fixed on the launcher, so every worker and retry records under the same run)."""

    store_url: str
    stage: str
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    retry_s: float = 300.0


class Writer:
    """Records, writes and confirms batches (see the module docstring). `sink`: a
    `KafkaSink` or `FileSink` built with `on_answered=writer.answered`."""

    def __init__(
        self,
        lineage: Lineage | None,
        make_sink: Callable[[Any], KafkaSink | FileSink],
        destinations: Callable[[str], tuple[str, str]],
        *,
        expected: int | None = None,
    ) -> None:
        self.recorder = (
            LineageRecorder(
                lineage.store_url,
                pipeline=lineage.stage,
                run_id=lineage.run_id,
                retry_s=lineage.retry_s,
            )
            if lineage is not None
            else None
        )
        self.sink = make_sink(self.recorder.confirm if self.recorder is not None else None)
        self.destinations = destinations
        self.counters = OutcomeCounters()
        self.expected = expected
        self.written = 0
        self.started = self.last_report = time.monotonic()

    def write(self, batch: GuardBatch, stop: Callable[[], bool]) -> GuardBatch | None:
        """Writes `batch` (as delivered: refused records quarantined). None when `stop()`
        turned true while an unavailable store was being retried: nothing was written."""
        if isinstance(self.sink, KafkaSink):
            batch = self.sink.prepare(batch)  # where each record fits, before its lineage
        receipt = None
        if self.recorder is not None:
            allowed_to, quarantined_to = self.destinations(batch.topic)
            recorded = self.recorder.record(
                batch, allowed_to=allowed_to, quarantined_to=quarantined_to, stop=stop
            )
            if recorded is None:
                return None
            batch, receipt = recorded.batch, recorded.entry  # refused rows: quarantined
        self.sink.write(batch, receipt)
        self.counters.add(batch)
        self._progress(len(batch))
        return batch

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()
        if self.recorder is not None:
            self.recorder.close()

    def _progress(self, n: int) -> None:
        self.written += n
        now = time.monotonic()
        if now - self.last_report >= 2.0:
            self.last_report = now
            rate = self.written / max(now - self.started, 1e-9)
            total = f"/{self.expected}" if self.expected is not None else ""
            progress.info("guarded %d%s records (%.0f records/s)", self.written, total, rate)


class OutcomeCounters:
    """The Beam counters a written batch adds to (read back by `Summary`): `outcome:allowed`,
    `outcome:quarantined:STAGE:RULES`, `outcome:blocked:STAGE:RULES`, `content_class:X`,
    `origin_env:X` and, for allowed records, `allowed_class:X` (a training export's
    synthetic ratio)."""

    def __init__(self) -> None:
        self.counters: dict[str, Any] = {}

    def add(self, batch: GuardBatch) -> None:
        n = len(batch)
        classes = _texts(batch, "content_class")
        envs = _texts(batch, "origin_env")
        if batch.records is not None:
            for i, record in enumerate(batch.records):
                if record is not None:
                    provenance = provenance_of(record)
                    classes[i] = str(provenance.get("content_class"))  # any JSON value: as text
                    envs[i] = str(provenance.get("origin_env"))
        stopped = batch.stopped_at()
        blocked = batch.blocked()
        rules: list[tuple[str, ...]] = [()] * n
        for i, found in batch.violations.items():
            rules[i] = tuple(v.rule for v in found)
        kinds = Counter(zip(stopped, blocked, rules, classes, envs, strict=True))
        counts = outcome_counts(
            (stopped_at, was_blocked, list(r), content_class, origin_env, k)
            for (stopped_at, was_blocked, r, content_class, origin_env), k in kinds.items()
        )
        for name, k in counts.items():
            counter = self.counters.get(name)
            if counter is None:
                counter = self.counters[name] = Metrics.counter(NAMESPACE, name)
            counter.inc(k)


def _texts(batch: GuardBatch, name: str) -> list[str]:
    """A contract column's values as the counters name them (`None` for null)."""
    if not batch.has(name):
        return ["None"] * len(batch)
    return [str(v) for v in batch.column(name).to_pylist()]


def outcome_counts(
    kinds: Iterable[tuple[str | None, bool, Iterable[str], str, str, int]],
) -> Counter[str]:
    """The counter names (see `OutcomeCounters`) of `(stopped_at, blocked, rules,
    content_class, origin_env, records)` groups: one naming for the write step's counters and
    for the counts read back from the lineage store."""
    counts: Counter[str] = Counter()
    for stopped_at, blocked, rules, content_class, origin_env, n in kinds:
        if stopped_at is None:
            counts["outcome:allowed"] += n
            counts[f"allowed_class:{content_class}"] += n
        else:
            decision = "blocked" if blocked else "quarantined"
            counts[f"outcome:{decision}:{stopped_at}:{','.join(sorted(set(rules)))}"] += n
        counts[f"content_class:{content_class}"] += n
        counts[f"origin_env:{origin_env}"] += n
    return counts
