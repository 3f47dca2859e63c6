"""The endless guard on Beam's Flink job server (`infra/flink/flink.sh`): a guard killed with
SIGKILL leaves its streaming job behind; the restarted guard of the same group cancels it
through Flink's REST API (`--flink-rest`) before it starts its own, so exactly one job of the
group runs on Flink. The workers are an external pool here (`--environment_type=EXTERNAL`), so
the killed guard's job keeps running and delivering after its guard died: LOOPBACK workers
would die with the guard and take the job down with them. Beam's own job server is no witness
(it lists a killed guard's job as RUNNING for good, and its cancel leaves a running job
running): the jobs are counted on Flink. And a run's summary counts what reached the topics.
Opt-in (`LINEAGE_GUARD_FLINK_TESTS=1`; `.ci/run` leaves it out: Flink on a 2-core machine
takes minutes): `flink.sh start` fetches the job server's jars from Maven Central once, and
starts it on `FLINK_JOB_PORT` / `FLINK_ARTIFACT_PORT` / `FLINK_REST_PORTS`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lineage_guard import flink_rest
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


REST = f"127.0.0.1:{os.environ.get('FLINK_REST_PORTS', '18100-18119')}"


@pytest.fixture
def worker_pool(tmp_path: Path) -> Iterator[str]:
    """A Beam worker pool of its own: the workers of a guard's job outlive the guard."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apache_beam.runners.worker.worker_pool_main",
            f"--service_port={port}",
        ],
        # the pool starts each SDK worker as `python …`: this venv's, as if activated
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "worker-pool.log").open("w"),
        start_new_session=True,
    )
    try:
        _wait(lambda: _answers(port), 60, "the worker pool")
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(pool.pid, signal.SIGKILL)
        pool.wait(timeout=30)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _guard(bootstrap: str, src: str, out: str, q: str, endpoint: str, pool: str, log: Path) -> Any:
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
            "--flink-rest",
            REST,
            "--",
            f"--job_endpoint={endpoint}",
            "--environment_type=EXTERNAL",
            f"--environment_config={pool}",
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


def _delivered(bootstrap: str, out: str, q: str) -> set[bytes | None]:
    return {m.value for t in (out, q) for m in drain(bootstrap, t)}


def test_a_restarted_guard_cancels_the_job_a_killed_one_left(
    kafka_bootstrap: str, flink: str, worker_pool: str, tmp_path: Path
) -> None:
    src, out, q = new_topics(kafka_bootstrap, "src", "out", "q", partitions=3)
    name = f"lineage-guard-g-{src}".lower()
    first = _values(300, seed=51)
    _produce(kafka_bootstrap, src, first)
    guard = _guard(kafka_bootstrap, src, out, q, flink, worker_pool, tmp_path / "first.log")
    try:
        wanted = {v for _, v in first}
        _wait(lambda: wanted <= _delivered(kafka_bootstrap, out, q), 300, "the first records")
        [(_, killed_job)] = flink_rest.live_jobs(REST, name)
        os.killpg(guard.pid, signal.SIGKILL)  # the launcher only: the job and its workers live
        guard.wait(timeout=30)
        # The killed guard's job still runs on Flink, and still delivers.
        orphaned = _values(30, seed=53)
        _produce(kafka_bootstrap, src, orphaned)
        wanted = {v for _, v in orphaned}
        _wait(lambda: wanted <= _delivered(kafka_bootstrap, out, q), 120, "the orphan's records")
        assert flink_rest.live_jobs(REST, name) == [(_, killed_job)]
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, signal.SIGKILL)
            guard.wait(timeout=30)

    restarted = _guard(kafka_bootstrap, src, out, q, flink, worker_pool, tmp_path / "second.log")
    try:
        _wait(
            lambda: [j for _, j in flink_rest.live_jobs(REST, name) if j != killed_job],
            300,
            "the restarted guard's job",
        )
        second = _values(300, seed=52)
        _produce(kafka_bootstrap, src, second)
        wanted = {v for _, v in second}
        _wait(lambda: wanted <= _delivered(kafka_bootstrap, out, q), 300, "the second records")
        [(_, new_job)] = flink_rest.live_jobs(REST, name)  # exactly one job of the group runs
        assert new_job != killed_job
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=120)
    finally:
        if restarted.poll() is None:
            os.killpg(restarted.pid, signal.SIGKILL)
            restarted.wait(timeout=30)
    stderr = (tmp_path / "second.log").read_text()
    said = " ".join(stderr.split())
    assert f"cancelling Flink job `{killed_job}`" in said, said
    assert restarted.returncode == 130, stderr


def test_counts_equal_the_topics_after_a_run_on_flink(
    kafka_bootstrap: str, flink: str, tmp_path: Path
) -> None:
    """The stopped run's summary counts what reached the topics (from the lineage store),
    records produced while the job ran included."""
    src, out, q = new_topics(kafka_bootstrap, "src", "out", "q", partitions=3)
    values = _values(600, seed=71)  # every 10th undecodable: quarantined
    _produce(kafka_bootstrap, src, values[:300])
    guard = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from lineage_guard.cli.main import main; main()",
            "run",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--input-topic",
            src,
            "--output-topic",
            out,
            "--quarantine-topic",
            q,
            "--group-id",
            f"g-{src}",
            "--lineage-store",
            f"sqlite:///{tmp_path / 'lineage.db'}",
            "--runner",
            "PortableRunner",
            "--",
            f"--job_endpoint={flink}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "guard.log").open("w"),
        start_new_session=True,
    )
    try:
        first = {v for _, v in values[:300]}
        _wait(lambda: first <= _delivered(kafka_bootstrap, out, q), 300, "the first records")
        _produce(kafka_bootstrap, src, values[300:])
        every = {v for _, v in values}
        _wait(lambda: every <= _delivered(kafka_bootstrap, out, q), 120, "the records after")
        guard.send_signal(signal.SIGTERM)
        guard.wait(timeout=120)
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, signal.SIGKILL)
            guard.wait(timeout=30)
    stderr = (tmp_path / "guard.log").read_text()
    assert guard.returncode == 130, stderr
    allowed, quarantined = len(drain(kafka_bootstrap, out)), len(drain(kafka_bootstrap, q))
    assert (allowed, quarantined) == (540, 60)
    [summary] = [line for line in stderr.splitlines() if line.startswith("lineage-guard run `")]
    assert ": read 600, allowed 540, quarantined 60, blocked 0 in " in summary, summary
