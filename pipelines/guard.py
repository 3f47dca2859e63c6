"""Builds and runs the guard's Beam pipeline from the library's transforms
(`lineage_guard.transforms`).

    source ──► Decode ──► Validate ──► Enforce ──► Write (allowed | quarantine, + lineage hop)

The elements are micro-batches of one partition (`lineage_guard.items.Batch`): GX runs once per
batch, and a record that a stage stops stays in its batch, marked, so the write stage sees every
partition's records in offset order and can commit offsets only behind delivered records.
Lineage events are written before the records they cover are produced: if the store cannot be
written, nothing is delivered and no offset is committed (the guard fails closed).

The runner is always explicit (default: Beam's in-process `FnApiRunner`); Prism, Flink, Spark
or Dataflow take the same graph through `--runner` and Beam's own options. Paths and URLs in
`GuardConfig` are resolved on the launcher (`lineage_guard.cli.run`), never on a worker.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from lineage_guard import heap
from lineage_guard.io.file_io import finalize_files
from lineage_guard.io.kafka import PartitionRange
from lineage_guard.lineage.errors import (
    ConfigError,
    LineageGuardError,
    ServiceUnavailableError,
    relayed_error,
)
from lineage_guard.lineage.store import first_line
from lineage_guard.recorder import LineageRecorder
from lineage_guard.stop import RunStop
from lineage_guard.transforms import (
    NAMESPACE,
    DecodeRecords,
    EnforcePolicies,
    FilesIO,
    KafkaIO,
    Lineage,
    ParentClasses,
    ReadFiles,
    ReadKafka,
    ValidateProvenance,
    WriteGuarded,
)

if TYPE_CHECKING:
    from lineage_guard.lineage.checkpoints import Checkpoint

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"
__all__ = ["DEFAULT_RUNNER", "NAMESPACE", "FilesIO", "GuardConfig", "KafkaIO", "Summary", "build"]


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    io: KafkaIO | FilesIO
    policies: tuple[str, ...] = ("production",)
    raw_schema: str | None = None
    schema_registry: str | None = None
    lineage_store: str | None = None  # None: lineage off
    # How long an unreachable lineage store or Schema Registry is waited out (`--service-wait`).
    lineage_retry_s: float = 300.0
    signing_key: str | None = None  # an Ed25519 PEM file: sign the chain heads at the end
    batch_size: int = 2000
    engine: str = "compiled"
    pipeline_name: str = "lineage-guard"
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    runner: str = DEFAULT_RUNNER
    beam_args: tuple[str, ...] = ()
    poll_interval_s: float = 0.1  # endless mode: a caught-up partition's wait before it polls
    stop: RunStop = field(default_factory=RunStop)  # the run's stop (`lineage_guard.stop`)


def build(
    pipeline: beam.Pipeline, config: GuardConfig, ranges: Sequence[PartitionRange] = ()
) -> None:
    """The guard's graph, from the library's transforms::

        source ─► ParentClasses ───────────────────────┐ (side input: the run's generated records)
        source ─► Decode ─► ValidateProvenance ◄───────┘ ─► EnforcePolicies ─► Write (+ hop)

    The source is read twice: once to learn the class of every generated record in the run
    (each message read only as far as its id and class), once to guard it. A child is judged
    only after every partition's parents are known, so its verdict does not depend on which
    worker read its parent, or when.
    """
    io = config.io

    def source(label: str, counter: str | None) -> beam.PTransform:
        if isinstance(io, KafkaIO):
            return label >> ReadKafka(
                io.settings, ranges, config.batch_size, counter=counter, stop=config.stop
            )
        return label >> ReadFiles(io.inputs, config.batch_size, counter=counter, stop=config.stop)

    decode: dict[str, Any] = {
        "raw_schema": config.raw_schema,
        "schema_registry": config.schema_registry,
        "registry_wait_s": config.lineage_retry_s,
    }
    parents = pipeline | source("IndexRead", None) | "ParentClasses" >> ParentClasses(**decode)
    # The graph chains on `guarded` alone: the stages fill no `valid` / `quarantine` copies.
    decoded = pipeline | source("Read", "read") | "Decode" >> DecodeRecords(**decode).guarded_only()
    validated = (
        decoded.guarded
        | "Validate"
        >> ValidateProvenance(
            config.engine,
            parents=parents,
            lineage_store=config.lineage_store,
            lineage_retry_s=config.lineage_retry_s,
        ).guarded_only()
    )
    enforced = validated.guarded | "Enforce" >> EnforcePolicies(config.policies).guarded_only()
    lineage = (
        Lineage(
            store_url=config.lineage_store,
            stage=config.pipeline_name,
            run_id=config.run_id,
            retry_s=config.lineage_retry_s,
        )
        if config.lineage_store
        else None
    )
    expected = sum(r.size for r in ranges) if isinstance(io, KafkaIO) else None
    _ = enforced.guarded | "Write" >> WriteGuarded(io, expected, lineage=lineage, stop=config.stop)


# Runners whose workers run in this process or on this machine, in this working directory.
LOCAL_RUNNERS = frozenset(
    {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}
)


def is_local(runner: str) -> bool:
    return runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS


# Runners that start a job server from a jar Beam downloads at run time, unless given one.
_JAR_RUNNERS = {"FlinkRunner": "flink", "SparkRunner": "spark", "SamzaRunner": "samza"}


def check_job_server(runner: str, beam_args: Sequence[str]) -> None:
    """Refuses, in one line, a `FlinkRunner` / `SparkRunner` / `SamzaRunner` with neither a job
    server (`--job_endpoint`) nor its jar (`--<runner>_job_server_jar`): Beam would download
    the jar from Maven Central at run time (none is published for Beam 2.77 past 2.62)."""
    name = runner.rsplit(".", 1)[-1]
    kind = _JAR_RUNNERS.get(name)
    if kind is None:
        return
    given = {arg.split("=", 1)[0].lstrip("-") for arg in beam_args}
    if given & {"job_endpoint", f"{kind}_job_server_jar"}:
        return
    raise ConfigError(
        f"`--runner {name}` needs a job server: without one Beam downloads its jar at run time."
        f" Start one (`infra/flink/flink.sh` for Flink) and pass `--runner PortableRunner --"
        f" --job_endpoint=HOST:PORT`, or give `-- --{kind}_job_server_jar=PATH`."
    )


def resolve_path(path: str) -> str:
    """A local path made absolute here, on the launcher; a URI (`gs://…`) as it is."""
    from lineage_guard.io.file_io import is_uri

    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def resolve_store_url(url: str, runner: str) -> str:
    """A relative `sqlite:///path` made absolute on the launcher for an in-process runner;
    refused for any other runner, whose workers would each create their own file."""
    from lineage_guard.lineage.store import sqlite_path

    if not url.lower().startswith("sqlite:"):
        return url
    path = sqlite_path(url)
    if Path(path).is_absolute():
        return url
    if not is_local(runner):
        raise ConfigError(
            f"The lineage store `{url}` is a relative SQLite path, which each `{runner}` worker "
            "would resolve in its own directory: give an absolute one (`sqlite:////abs/path.db`)"
            " on a shared disk, or a `postgresql://…` store."
        )
    return f"sqlite:///{Path(path).resolve()}"


@dataclass(kw_only=True)
class Summary:
    """A run's counters: `read`, `outcome:allowed`, `outcome:quarantined:STAGE:RULES`,
    `outcome:blocked:STAGE:RULES`, `content_class:X`, `origin_env:X`."""

    counters: dict[str, int] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return self.counters.get("read", 0)

    @property
    def allowed(self) -> int:
        return self.counters.get("outcome:allowed", 0)

    @property
    def stopped(self) -> dict[str, int]:
        """`quarantined:STAGE:RULES` / `blocked:STAGE:RULES` → count."""
        return {
            k.removeprefix("outcome:"): n
            for k, n in self.counters.items()
            if k.startswith(("outcome:quarantined:", "outcome:blocked:"))
        }

    @property
    def quarantined(self) -> int:
        return sum(n for k, n in self.stopped.items() if k.startswith("quarantined:"))

    @property
    def blocked(self) -> int:
        return sum(n for k, n in self.stopped.items() if k.startswith("blocked:"))

    def by(self, prefix: str) -> dict[str, int]:
        """Counts under one prefix, e.g. `by("content_class")` → {"HUMAN": 12, …}."""
        return {  # a copy first: the OpenLineage heartbeat reads while the run adds
            k.split(":", 1)[1]: n
            for k, n in list(self.counters.items())
            if k.startswith(prefix + ":")
        }

    def decisions(self) -> dict[str, int]:
        return {"allowed": self.allowed, "quarantined": self.quarantined, "blocked": self.blocked}

    def add(self, other: Summary) -> None:
        for key, n in other.counters.items():
            self.counters[key] = self.counters.get(key, 0) + n


def summary_from_store(config: GuardConfig, *, since: datetime | None = None) -> Summary:
    """The run's counts from its lineage: the hops the write step recorded (every record it
    guarded, once, whatever the runner reports of its metrics). `read` is every record with a
    hop; records still in flight have none yet."""
    from lineage_guard.lineage.store import open_store
    from lineage_guard.transforms import outcome_counts

    assert config.lineage_store is not None
    with open_store(config.lineage_store) as store:
        rows = store.run_counts(config.pipeline_name, config.run_id, since=since)
    counts = outcome_counts(
        (
            row.stopped_at,
            row.outcome == "blocked",
            row.rules,
            str(row.content_class),
            str(row.origin_env),
            row.count,
        )
        for row in rows
    )
    counts["read"] = sum(row.count for row in rows)
    return Summary(counters=dict(counts))


def run_once(config: GuardConfig) -> Summary:
    """One bounded run: Kafka up to the end offsets present now, or every input file."""
    from lineage_guard.io.kafka import plan_ranges

    ranges: list[PartitionRange] = []
    if isinstance(config.io, KafkaIO):
        ranges = plan_ranges(config.io.settings, list(config.io.input_topics))
        if not ranges:
            return Summary()
    units = len(ranges) if isinstance(config.io, KafkaIO) else len(config.io.inputs)
    spread = worker_args(config, units)
    options = PipelineOptions([f"--runner={config.runner}", *spread, *config.beam_args])
    workers = bool(spread) or (
        options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    )
    try:
        pipeline = beam.Pipeline(runner=_worker_processes() if spread else None, options=options)
    except ValueError as exc:  # an unknown runner name
        raise ConfigError(f"Cannot use `--runner {config.runner}`: {first_line(exc)}") from exc
    build(pipeline, config, ranges)
    heap.settle()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:
        if (
            workers
            and config.stop.requested()
            and not _ours(exc)
            and relayed_error(str(exc)) is None
        ):
            # `--direct_running_mode=multi_processing`: Ctrl-C reaches the worker processes too
            # (one process group) and ends them before they deliver more. SIGTERM to the guard
            # alone stops them cleanly (`lineage_guard.stop`).
            log.warning(
                "the worker processes ended with the stop signal: the counts below miss what "
                "they delivered (`lineage trace` / `lineage report` show it)"
            )
            return Summary()
        if is_local(config.runner) or _ours(exc):
            raise  # a worker's own error (handled by the CLI), or a bug
        raise ServiceUnavailableError(
            f"The `{config.runner}` runner could not run the job: {_cause(exc)}. Check the "
            "runner's options after `--` (job server, cluster, workers with lineage-guard)."
        ) from exc
    if isinstance(config.io, FilesIO):
        finalize_files(config.io.out_dir, config.io.names)
    return _summary(result)


def worker_args(config: GuardConfig, units: int) -> list[str]:
    """Puts every core to work on a bounded run of the in-process runner: one worker process
    per partition (or input file), at most one per core (`lineage_guard.worker`). Nothing when
    there is one partition or one core, for other runners, or when the user chose after `--`
    (`--direct_num_workers`, `--direct_running_mode`). Decisions do not depend on it: parents
    come from the run's `ParentIndex` and the lineage store, never from one worker."""
    if config.runner.rsplit(".", 1)[-1] != "FnApiRunner":
        return []
    given = {arg.split("=", 1)[0].lstrip("-") for arg in config.beam_args}
    if given & {"direct_num_workers", "direct_running_mode"}:
        return []
    workers = min(units, os.cpu_count() or 1)
    return [f"--direct_num_workers={workers}"] if workers > 1 else []


def _worker_processes() -> Any:
    """The in-process runner with `lineage_guard.worker` processes as its workers."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    # `exec`: the worker replaces the shell Beam starts it with, so it alone gets signals
    command = f"exec {shlex.quote(sys.executable)} -m lineage_guard.worker"
    # Beam warns that `--direct_num_workers` without `--direct_running_mode` gives no
    # parallelism: here the environment gives it.
    logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").setLevel(
        logging.ERROR
    )
    return FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command))


def _cause(exc: BaseException) -> str:
    """One line: a worker's traceback, as runners relay it, shortened to its last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if any("Traceback (most recent call last)" in line for line in lines):
        head = lines[0].split("Traceback (most recent call last)")[0].strip(" :")
        return f"{head}: {lines[-1]}" if head else lines[-1]
    return lines[0].rstrip(".")


def _ours(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, LineageGuardError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def sign_checkpoint(config: GuardConfig) -> Checkpoint | None:
    """With `config.signing_key`, sign the lineage store's chain heads now (at the end of a
    run, on the launcher) and keep the checkpoint in the store; None without a key."""
    if not (config.signing_key and config.lineage_store):
        return None
    from lineage_guard.lineage.checkpoints import load_private_key

    recorder = LineageRecorder(
        config.lineage_store,
        pipeline=config.pipeline_name,
        run_id=config.run_id,
        retry_s=config.lineage_retry_s,
    )
    try:
        return recorder.sign(load_private_key(config.signing_key))
    finally:
        recorder.close()


def _summary(result: Any) -> Summary:
    summary = Summary()
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name, value = counter.key.metric.name, counter.committed or counter.attempted or 0
        summary.counters[name] = summary.counters.get(name, 0) + value
    return summary
