"""`lineage-guard run` without `--until-caught-up`: the guard as one streaming Beam job.

The in-process `FnApiRunner` runs bounded pipelines only, so the endless mode picks a streaming
runner (Prism, from `--prism-location`, `LINEAGE_GUARD_PRISM` or `prism` on PATH) and says so on
stderr; `--runner PortableRunner` (with `-- --job_endpoint=…`, e.g. from `infra/flink/flink.sh`)
or any other streaming runner is taken as given.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from typing import Any

import click

from lineage_guard.guard import GuardConfig, Summary, _summary
from lineage_guard.lineage.errors import (
    ConfigError,
    LineageGuardError,
    ServiceUnavailableError,
    relayed_error,
)

log = logging.getLogger(__name__)

BOUNDED_ONLY = ("FnApiRunner", "BundleBasedDirectRunner")


def streaming_config(config: GuardConfig, prism_location: str | None) -> tuple[GuardConfig, str]:
    """The config with a streaming runner, and the Prism binary to use (if Prism)."""
    prism = prism_location or shutil.which("prism") or ""
    runner = config.runner
    if runner in BOUNDED_ONLY:
        runner = "PrismRunner"
        click.echo(
            f"lineage-guard: the endless mode runs as one streaming job on PrismRunner "
            f"(`{config.runner}` runs bounded pipelines only; `--runner` picks another).",
            err=True,
        )
    if runner == "PrismRunner" and not prism:
        raise ConfigError(
            "The endless mode needs a streaming runner: give `--prism-location PATH` "
            "(build it with `infra/prism/prism.sh build`), or `--runner PortableRunner` "
            "with `-- --job_endpoint=HOST:PORT` (e.g. `infra/flink/flink.sh start`), "
            "or `--until-caught-up` for a bounded run."
        )
    return dataclasses.replace(config, runner=runner), prism


METRICS_POLL_S = 2.0  # how often the job's counters are read while it runs
WRITES_WAIT_S = 60.0  # a batch's delivery: Kafka's 30 s time-out, the lineage store's retries


def run_endless(
    config: GuardConfig,
    prism_location: str | None,
    total: Summary,
    *,
    flink_rest: str | None = None,
) -> None:
    """Runs until stopped (Ctrl-C / SIGTERM cancel the job) or until the job fails. `total`
    follows the job's counters while it runs (OpenLineage RUNNING events report them) and
    ends with their last values."""
    from lineage_guard.streaming import run_streaming

    config, prism = streaming_config(config, prism_location)
    _quiet_worker_threads_on_stop(config)
    result = run_streaming(config, prism_location=prism or None, flink_rest=flink_rest)
    counts = _JobCounters(result, total)
    counts.start()
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        try:
            result.cancel()
        except Exception:  # the runner went down with us (e.g. SIGTERM to the process group)
            log.info("the streaming job could not be cancelled: its runner is gone")
        # The cancel returns while workers (LOOPBACK ones run in this process) still deliver
        # the batches in hand: the counts are read once those deliveries ended.
        if not config.stop.wait_written(WRITES_WAIT_S):
            log.warning(
                "workers were still delivering %.0f s after the stop: the counts below may miss"
                " their last batches (`lineage trace` shows them)",
                WRITES_WAIT_S,
            )
        counts.finish()
        raise
    except LineageGuardError:
        raise
    except Exception as exc:
        raise _our_error(str(exc)) from exc
    finally:
        counts.stop()
    counts.finish()


# Beam's loggers in this process's workers (LOOPBACK) that report their gRPC streams breaking.
_WORKER_LOGGERS = ("apache_beam.runners.worker.data_plane", "apache_beam.runners.worker.sdk_worker")


def _quiet_worker_threads_on_stop(config: GuardConfig) -> None:
    """After a stop signal, Beam's threads in this process (the LOOPBACK workers, the job's
    state and message streams) end with gRPC errors: the runner went down with the signal (Ctrl-C
    and `kill -TERM -PGID` reach Prism too) or is cancelled. They print a traceback each, though
    nothing failed: the stop message says what happened. From the signal on, such a thread's
    gRPC error is one debug line, and those loggers keep their records; before it, they print
    as they always did (a job that fails is reported by `wait_until_finish`)."""
    import grpc

    stopping = config.stop.requested
    previous = threading.excepthook

    def thread_ended(args: Any) -> None:
        if stopping() and isinstance(args.exc_value, grpc.RpcError):
            log.debug("%s ended with the stop: %s", getattr(args.thread, "name", "a thread"),
                      type(args.exc_value).__name__)  # fmt: skip
            return
        previous(args)

    threading.excepthook = thread_ended
    for name in _WORKER_LOGGERS:
        logging.getLogger(name).addFilter(lambda _record: not stopping())


class _JobCounters:
    """Reads a running job's counters every `METRICS_POLL_S` into `total` (on top of what it
    held before). A cancelled job may no longer answer for its metrics: the last values read
    then stand, so a stopped run never reports fewer records than it had counted."""

    def __init__(self, result: Any, total: Summary) -> None:
        self.result = result
        self.total = total
        self.base = dict(total.counters)
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="job-counters", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)

    def finish(self) -> None:
        self.stop()
        self.read()

    def read(self) -> None:
        try:
            now = _summary(self.result).counters
        except Exception:  # a cancelled or failed job may not answer: keep what was read
            return
        with self.lock:
            for name, value in now.items():  # counters only grow: never step one back
                self.seen[name] = max(value, self.seen.get(name, 0))
            merged = dict(self.base)
            for name, value in self.seen.items():
                merged[name] = merged.get(name, 0) + value
            self.total.counters = merged  # one assignment: readers see old or new, whole

    def _poll(self) -> None:
        while not self.stopped.wait(METRICS_POLL_S):
            self.read()


def _our_error(text: str) -> LineageGuardError:
    """A worker's error comes back from a portable runner as text: find ours in it."""
    ours = relayed_error(text)
    if ours is not None:
        return ours
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return ServiceUnavailableError(f"The streaming job failed: {first[:500]}")
