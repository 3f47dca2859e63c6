"""The endless guard on Beam's Flink job server (`infra/flink/flink.sh`): a guard killed with
SIGKILL leaves its streaming job RUNNING on the job server (its launcher is gone, the job is
not); the restarted guard of the same group finds that job and cancels it before it starts
its own. Beam's Flink job server accepts the cancel but leaves the job RUNNING: the guard
says so (its LOOPBACK workers died with the killed guard: it delivers nothing more) and runs.
Opt-in (`LINEAGE_GUARD_FLINK_TESTS=1`; `.ci/run` leaves it out: Flink on a 2-core machine
takes minutes): `flink.sh start` fetches the job server's jars from Maven Central once, and
starts it on `FLINK_JOB_PORT` / `FLINK_ARTIFACT_PORT`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from tests.integration.kafka_helpers import drain, new_topics
from tests.integration.test_streaming_guard import _produce, _values

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def flink() -> Iterator[str]:
    if not os.environ.get("LINEAGE_GUARD_FLINK_TESTS"):
        pytest.skip("Flink tests are opt-in: LINEAGE_GUARD_FLINK_TESTS=1")
    started = subprocess.run(
        ["bash", ROOT / "infra" / "flink" / "flink.sh", "start"],
        capture_output=True,
        text=True,
        check=True,
    )
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", ROOT / "infra" / "flink" / "flink.sh", "stop"], check=True)


def _live_jobs(endpoint: str, name: str) -> list[str]:
    with grpc.insecure_channel(endpoint) as channel:
        service = beam_job_api_pb2_grpc.JobServiceStub(channel)
        jobs = service.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=30).job_info
    live = (beam_job_api_pb2.JobState.RUNNING, beam_job_api_pb2.JobState.STARTING)
    return [
        job.job_id
        for job in jobs
        if job.state in live
        and job.pipeline_options.fields["beam:option:job_name:v1"].string_value == name
    ]


def _guard(bootstrap: str, src: str, out: str, q: str, endpoint: str, log: Path) -> Any:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from lineage_guard.cli.main import main; main()",
            "run",
            "--bootstrap-servers",
            bootstrap,
            "--input-topic",
            src,
            "--output-topic",
            out,
            "--quarantine-topic",
            q,
            "--group-id",
            f"g-{src}",
            "--no-lineage",
            "--runner",
            "PortableRunner",
            "--",
            f"--job_endpoint={endpoint}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_restarted_guard_cancels_the_job_a_killed_one_left(
    kafka_bootstrap: str, flink: str, tmp_path: Path
) -> None:
    src, out, q = new_topics(kafka_bootstrap, "src", "out", "q", partitions=3)
    name = f"lineage-guard-g-{src}".lower()
    first = _values(300, seed=51)
    _produce(kafka_bootstrap, src, first)
    guard = _guard(kafka_bootstrap, src, out, q, flink, tmp_path / "first.log")
    try:
        wanted = {v for _, v in first}
        _wait(
            lambda: wanted <= {m.value for t in (out, q) for m in drain(kafka_bootstrap, t)},
            300,
            "the first records on Flink",
        )
        [killed_job] = _live_jobs(flink, name)
        os.killpg(guard.pid, signal.SIGKILL)  # the launcher (and its LOOPBACK workers) only
        guard.wait(timeout=30)
        time.sleep(5)
        assert _live_jobs(flink, name) == [killed_job]  # the job outlived its guard
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, signal.SIGKILL)
            guard.wait(timeout=30)

    restarted = _guard(kafka_bootstrap, src, out, q, flink, tmp_path / "second.log")
    try:
        second = _values(300, seed=52)
        _produce(kafka_bootstrap, src, second)
        wanted = {v for _, v in second}
        _wait(
            lambda: wanted <= {m.value for t in (out, q) for m in drain(kafka_bootstrap, t)},
            300,
            "the records after the restart",
        )
        live = _live_jobs(flink, name)
        assert len(live) == 2 and killed_job in live, live  # the job server kept the old one
        [new_job] = [job for job in live if job != killed_job]
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=120)
    finally:
        if restarted.poll() is None:
            os.killpg(restarted.pid, signal.SIGKILL)
            restarted.wait(timeout=30)
    stderr = (tmp_path / "second.log").read_text()
    said = " ".join(stderr.split())
    assert f"cancelling job `{killed_job}` that a stopped guard of this group left" in said
    assert (
        f"The job `{killed_job}` a stopped guard of this group left on `{flink}` is still "
        "RUNNING 30 s after it was cancelled; its LOOPBACK workers died with that guard, so it "
        "reads and delivers nothing more" in said
    ), said
    assert restarted.returncode == 130, stderr
    _wait(lambda: new_job not in _live_jobs(flink, name), 60, "the new job cancelled on SIGTERM")
