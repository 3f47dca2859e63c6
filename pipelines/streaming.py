"""The endless guard as one unbounded Beam pipeline, for streaming runners (Prism, Flink…).

    ReadFromKafka ──► Decode ──► Validate ──► Enforce ──► DeliverAndCommit (keyed by partition)

The source emits `Chunk`s (records of one partition + the offset span they cover): each read
call hands on what arrived since the partition's last call, so a chunk is the micro-batch and
its size follows the rate. The stages run fused with the read, in its bundle; the only shuffle
is the write step's key. Every stage boundary costs a runner's scheduling round (on Prism, 50
to several hundred ms each): the micro-batches used to be grouped (`GroupIntoBatches`) and
reshuffled before validation, two more boundaries that held a record about 0.5 s.

Offsets are committed by the write step from keyed state, never by relying on fusion: the
write step is keyed by topic-partition, so the runner hands it one partition's batches one at a
time. For each batch it records lineage, produces the records and adds the batch's spans to
the partition's state; once the bundle's records are all acknowledged by Kafka
(`finish_bundle`: one wait and one offset commit per bundle, however many batches it holds)
it commits the end of the gap-free run of delivered spans that starts at the last commit. If
that fails the bundle fails, and the runner drops its state writes. A batch that arrives early
(its predecessor not yet written) is delivered but not committed past the gap; a crash loses
nothing, it only replays what was not yet committed (at-least-once).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import grpc
from apache_beam.coders import PickleCoder, VarIntCoder
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
)
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from confluent_kafka import KafkaException, TopicPartition

from lineage_guard import flink_rest as flink_rest_api
from lineage_guard import heap
from lineage_guard.arrow_batch import GuardBatch
from lineage_guard.guard import GuardConfig, KafkaIO
from lineage_guard.io.kafka import KafkaSink, retrying
from lineage_guard.io.kafka_source import Chunk, ReadFromKafka, start_offset
from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError
from lineage_guard.transforms import _Decode, _Enforce, _Validate
from lineage_guard.writer import Lineage, Writer

log = logging.getLogger(__name__)

Span = tuple[int, int]  # offsets [start, stop) of one partition
FRONTIER = ReadModifyWriteStateSpec("frontier", VarIntCoder())  # the last committed offset
WAITING = ReadModifyWriteStateSpec("waiting", PickleCoder())  # delivered spans after a gap
FRONTIER_STATE = beam.DoFn.StateParam(FRONTIER)
WAITING_STATE = beam.DoFn.StateParam(WAITING)
# Never set. Prism (2.77) waits for a bundle's end on its output and timer streams; for a stage
# that has neither, as the write step had, it waits in a busy loop (`stage.Execute` selects on
# a closed channel): one core spun for as long as each write bundle ran, beside the worker.
# A declared timer family is a stream Prism waits on without spinning.
BUNDLE_END = TimerSpec("bundle_end", TimeDomain.WATERMARK)
BUNDLE_END_TIMER = beam.DoFn.TimerParam(BUNDLE_END)


@dataclass(frozen=True, kw_only=True)
class Part:
    """A micro-batch of one partition and the offset spans its records were read from."""

    key: str  # "topic/partition"
    spans: tuple[Span, ...]
    batch: GuardBatch


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sorted, with touching or overlapping spans joined."""
    merged: list[Span] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def advance(frontier: int, delivered: Iterable[Span]) -> tuple[int, list[Span]]:
    """The new commit point: `frontier` moved over every delivered span that joins it without
    a gap; the spans still waiting for an earlier one are returned."""
    waiting = []
    for start, stop in merge_spans(delivered):
        if start <= frontier:
            frontier = max(frontier, stop)
        else:
            waiting.append((start, stop))
    return frontier, waiting


def to_part(chunk: Chunk) -> Part:
    batch = chunk.batch
    return Part(
        key=f"{batch.topic}/{batch.partition}", spans=((chunk.start, chunk.stop),), batch=batch
    )


class _Stage(beam.DoFn):
    """Runs one of the bounded graph's stage DoFns (the one guard chain) on a `Part`'s batch."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage

    def setup(self) -> None:
        self.stage.setup()

    def process(self, part: Part) -> Iterator[Part]:
        yield replace(part, batch=self.stage.check(part.batch, None))

    def teardown(self) -> None:
        teardown = getattr(self.stage, "teardown", None)
        if teardown is not None:
            teardown()


def stages_of(config: GuardConfig) -> list[tuple[str, Any]]:
    """The chain's stage DoFns as the streaming job runs them (no run-wide parent index:
    parents come from the lineage store)."""
    return [
        ("Decode", _Decode(config.raw_schema, config.schema_registry, config.lineage_retry_s)),
        (
            "Validate",
            _Validate(config.engine, config.lineage_store, config.lineage_retry_s, config.stop),
        ),
        ("Enforce", _Enforce(config.policies)),
    ]


class DeliverAndCommit(beam.DoFn):
    """Lineage, then the records, then the partition's offset: only behind delivered records.

    Keyed by topic-partition; its state holds the partition's commit point (`frontier`,
    committed when the bundle ends) and the delivered spans that wait for an earlier batch
    (`waiting`)."""

    def __init__(self, config: GuardConfig) -> None:
        assert isinstance(config.io, KafkaIO)
        self.config = config
        self.io: KafkaIO = config.io

    def setup(self) -> None:
        io = self.io
        lineage = (
            Lineage(
                store_url=self.config.lineage_store,
                stage=self.config.pipeline_name,
                run_id=self.config.run_id,
                retry_s=self.config.lineage_retry_s,
            )
            if self.config.lineage_store
            else None
        )
        self.writer = Writer(
            lineage,
            lambda answered: KafkaSink(
                io.settings,
                output_topic=io.output_topic,
                quarantine_topic=io.quarantine_topic,
                on_answered=answered,
                commits=False,
            ),
            io.destinations,
        )
        self.committer = io.settings.consumer()
        self.delivering = contextlib.ExitStack()

    def teardown(self) -> None:
        self.delivering.close()
        self.writer.close()
        self.committer.close()

    def start_bundle(self) -> None:
        # `RunStop.writing`, from the bundle's first batch until its `finish_bundle` ended.
        self.delivering.close()  # (a failed bundle's, whose `finish_bundle` never ran)
        self.delivering = contextlib.ExitStack()
        self.marked = False
        self.written = 0  # batches this bundle wrote
        self.to_commit: dict[tuple[str, int], int] = {}

    def process(
        self,
        element: tuple[str, Part],
        frontier_state: Any = FRONTIER_STATE,
        waiting_state: Any = WAITING_STATE,
    ) -> None:
        _key, part = element
        if not self.marked:  # the bundle's first batch: from now until it is acknowledged
            self.delivering.enter_context(self.config.stop.writing())
            self.marked = True
        if self.config.stop.requested():
            return  # once stopped, nothing more is delivered; the launcher counts after this
        try:
            self._write(part, frontier_state, waiting_state)
        except BaseException:
            self.delivering.close()  # the bundle failed: nothing of it is being delivered
            raise

    def _write(self, part: Part, frontier_state: Any, waiting_state: Any) -> None:
        batch = part.batch
        self.writer.write(batch, lambda: False)  # lineage, then produced (acknowledged below)
        self.written += 1
        frontier = frontier_state.read()
        if frontier is None:  # first batch of this partition in this run: where the source began
            frontier = start_offset(
                self.committer, batch.topic, batch.partition, self.io.settings.timeout_s
            )
        moved, still_waiting = advance(frontier, [*(waiting_state.read() or []), *part.spans])
        if moved > frontier:
            self.to_commit[(batch.topic, batch.partition)] = moved
        frontier_state.write(moved)
        waiting_state.write(still_waiting)

    @on_timer(BUNDLE_END)
    def _bundle_end(self, _timer: Any = BUNDLE_END_TIMER) -> None:
        """Never called (`BUNDLE_END` is never set)."""

    def finish_bundle(self) -> None:
        """Waits until Kafka acknowledged every record the bundle wrote, then commits the
        partitions' new frontiers: one wait and one commit per bundle, however many batches
        it holds. The frontiers were written to state in `process`: if this fails, the bundle
        fails and the runner drops them with it."""
        with self.delivering:
            if self.written:
                self.writer.flush()  # raises unless Kafka acknowledged every record
            if self.to_commit:
                self._commit(self.to_commit)

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        listed = [TopicPartition(t, p, offset) for (t, p), offset in offsets.items()]
        timeout_s = self.io.settings.timeout_s
        try:
            retrying(lambda: self.committer.commit(offsets=listed, asynchronous=False), timeout_s)
        except KafkaException as exc:
            raise ServiceUnavailableError(f"Committing offsets failed: {exc}") from exc


def build_streaming(
    pipeline: beam.Pipeline,
    config: GuardConfig,
    *,
    discovery_interval_s: float = 10.0,
) -> None:
    io = config.io
    if not isinstance(io, KafkaIO):
        raise ConfigError("The streaming guard reads Kafka: give --bootstrap-servers.")
    parts = (
        pipeline
        | "ReadKafka"
        >> ReadFromKafka(
            io.settings,
            io.input_topics,
            max_chunk=config.batch_size,
            discovery_interval_s=discovery_interval_s,
            idle_poll_s=config.poll_interval_s,
        )
        | "ToPart" >> beam.Map(to_part)
    )
    for name, stage in stages_of(config):
        parts = parts | name >> beam.ParDo(_Stage(stage))
    _ = (
        parts
        | "KeyForWrite" >> beam.Map(lambda part: (part.key, part))
        | "Write" >> beam.ParDo(DeliverAndCommit(config))
    )


def job_name(config: GuardConfig) -> str:
    """The streaming job's name on its runner: one per consumer group (at most one guard runs
    per group), so a restarted guard finds the job a killed one left behind."""
    assert isinstance(config.io, KafkaIO)
    group = re.sub(r"[^a-z0-9]+", "-", config.io.settings.group_id.lower()).strip("-")
    return f"lineage-guard-{group}"[:63].rstrip("-")


LIVE = (
    beam_job_api_pb2.JobState.STOPPED,
    beam_job_api_pb2.JobState.STARTING,
    beam_job_api_pb2.JobState.RUNNING,
    beam_job_api_pb2.JobState.UPDATING,
    beam_job_api_pb2.JobState.DRAINING,
    beam_job_api_pb2.JobState.CANCELLING,
)


def cancel_orphaned_jobs(
    endpoint: str, name: str, *, loopback: bool, ended: bool = False, timeout_s: float = 30.0
) -> list[str]:
    """Cancels the jobs named `name` still live on the job server at `endpoint` and waits
    until they ended; returns their ids. Called before this guard starts its own job: the
    group's membership (`GroupMembership`) has already shown that no other guard of the group
    runs, so such a job is one a killed guard left (it stays RUNNING on the job server when
    its launcher is gone).

    Beam's Flink job server (2.62) keeps such a job RUNNING in its list for good, whether or
    not Flink still runs it (`lineage_guard.flink_rest`). `ended`: Flink's REST API showed
    that no job of that name runs (`flink_rest.cancel_jobs` ended them): the entries are
    reported and ignored. Otherwise they are cancelled: with LOOPBACK workers (the guard's
    default) the job's workers died with the killed guard, so it reads and delivers nothing
    more: this guard says so and starts its own. With workers of their own
    (`--environment_type` EXTERNAL, DOCKER…) the old job may still deliver: this guard refuses
    to start beside it (exit 4)."""
    channel = grpc.insecure_channel(endpoint)
    try:
        service = beam_job_api_pb2_grpc.JobServiceStub(channel)
        try:
            jobs = service.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=timeout_s).job_info
        except grpc.RpcError as exc:
            raise ServiceUnavailableError(
                f"The job server `{endpoint}` did not answer: {exc.code().name}."
            ) from exc
        ours = [job.job_id for job in jobs if job.state in LIVE and _named(job, name)]
        if ended:  # Flink's REST API showed that none of them runs: the job server's list lies
            for job_id in ours:
                log.warning(
                    "the job server `%s` still lists job `%s` a stopped guard of this group "
                    "left as live, but Flink runs no job named `%s` (Beam's job server loses "
                    "the end of a job whose guard was killed): ignored",
                    endpoint,
                    job_id,
                    name,
                )
            return ours
        deadline = time.monotonic() + timeout_s
        for job_id in ours:
            log.warning("cancelling job `%s` that a stopped guard of this group left", job_id)
            service.Cancel(beam_job_api_pb2.CancelJobRequest(job_id=job_id), timeout=timeout_s)
        for job_id in ours:
            while True:
                state = service.GetState(
                    beam_job_api_pb2.GetJobStateRequest(job_id=job_id), timeout=timeout_s
                ).state
                if state not in LIVE:
                    break
                if time.monotonic() > deadline:
                    state_name = beam_job_api_pb2.JobState.Enum.Name(state)
                    still = (
                        f"The job `{job_id}` a stopped guard of this group left on `{endpoint}` "
                        f"is still {state_name} {timeout_s:.0f} s after it was cancelled"
                    )
                    if not loopback:
                        raise ServiceUnavailableError(
                            f"{still}, and its workers may still deliver: end it on the job "
                            "server, then start the guard again."
                        )
                    log.warning(
                        "%s; its LOOPBACK workers died with that guard, so it reads and "
                        "delivers nothing more (end it on the job server to free its slots).",
                        still,
                    )
                    break
                time.sleep(0.5)
        return ours
    finally:
        channel.close()


def _named(job: Any, name: str) -> bool:
    options = job.pipeline_options.fields
    return any(
        options[key].string_value == name
        for key in ("beam:option:job_name:v1", "jobName", "job_name")
        if key in options
    )


def streaming_options(config: GuardConfig, prism_location: str | None) -> PipelineOptions:
    args = [f"--runner={config.runner}", "--streaming"]
    given = " ".join(config.beam_args)
    if "--job_name" not in given:
        args.append(f"--job_name={job_name(config)}")
    portable = config.runner in ("PrismRunner", "FlinkRunner", "PortableRunner")
    if portable and "--environment_type" not in given:
        args.append("--environment_type=LOOPBACK")
    flink = config.runner in ("FlinkRunner", "PortableRunner")
    if flink and "--max_bundle_time_mills" not in given:
        # Flink ends a bundle after `maxBundleTimeMills` (1 s by default), and a stage hands
        # its output on only when its bundle ends: at 200 records/s that made p99 2.0-2.1 s
        # produce -> allowed topic, against 0.54 s with 100 ms (`bench/streaming_latency.py`,
        # 4,000 records/s still sustained). Other job servers ignore the option.
        args.append("--max_bundle_time_mills=100")
    if config.runner == "PrismRunner":
        if prism_location and "--prism_location" not in given:
            args.append(f"--prism_location={prism_location}")
        # Prism 2.77 splits a slow bundle by handing its unstarted elements to a new bundle
        # and releases their keys, even a key the running half still holds: two bundles of
        # one topic-partition then run at once and one's state writes are lost. Our reader
        # checkpoints itself, so Prism's progress-based splits are turned off.
        args.append("--experiments=prism_disable_sdf_split")
    return PipelineOptions([*args, *config.beam_args])


def run_streaming(
    config: GuardConfig, *, prism_location: str | None = None, flink_rest: str | None = None
) -> Any:
    """Starts the endless guard as one streaming job and returns Beam's `PipelineResult`
    (the caller waits for it, or cancels it). `flink_rest`: where Flink's REST API answers
    for the job server's jobs (`flink_rest.endpoints`); the job a killed guard of the group
    left is cancelled there first."""
    options = streaming_options(config, prism_location)
    endpoint = options.view_as(PortableOptions).job_endpoint
    if endpoint and config.runner != "PrismRunner":  # a job server that outlives its guards
        name = options.view_as(GoogleCloudOptions).job_name
        if flink_rest:
            flink_rest_api.cancel_jobs(flink_rest, name)
        cancel_orphaned_jobs(
            endpoint,
            name,
            loopback=options.view_as(PortableOptions).environment_type == "LOOPBACK",
            ended=bool(flink_rest),
        )
    pipeline = beam.Pipeline(options=options)
    build_streaming(pipeline, config)
    heap.settle()
    return pipeline.run()
