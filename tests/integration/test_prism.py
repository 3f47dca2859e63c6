"""The bounded guard on Prism (Apache Beam's portable runner, built by `infra/prism/prism.sh`;
`LINEAGE_GUARD_PRISM` when set)
through an external Beam worker pool whose Python has only the built wheel installed: outputs
and lineage equal to the in-process runner's.

The clean venv is `LINEAGE_GUARD_WHEEL_VENV` when set (`.ci/run` builds it once); otherwise
this test builds the wheel and installs it, with its dependencies from PyPI, into a new venv.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lineage_guard.generate import Faults, generate
from lineage_guard.io.files import write_json_lines
from lineage_guard.lineage.store import open_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if given := os.environ.get("LINEAGE_GUARD_WHEEL_VENV"):
        return Path(given)
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", folder / "dist", ROOT],
        check=True,
    )
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    [wheel] = (folder / "dist").glob("*.whl")
    subprocess.run([venv / "bin" / "pip", "install", "-q", wheel], check=True)
    return venv


@pytest.fixture(scope="session")
def prism() -> str:
    if given := os.environ.get("LINEAGE_GUARD_PRISM"):  # `.ci/run` builds it once
        return given
    built = subprocess.run(
        ["bash", ROOT / "infra" / "prism" / "prism.sh", "build"],
        check=True,
        capture_output=True,
        text=True,
    )
    return built.stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def worker_pool(wheel_venv: Path, tmp_path: Path) -> Iterator[str]:
    """A Beam worker pool from the clean venv, in a directory of its own (so any path left
    relative would be resolved in the wrong place)."""
    port = _free_port()
    cwd = tmp_path / "worker"
    cwd.mkdir()
    pool = subprocess.Popen(
        [
            wheel_venv / "bin" / "python",
            "-m",
            "apache_beam.runners.worker.worker_pool_main",
            f"--service_port={port}",
        ],
        cwd=cwd,
        # the pool starts each SDK worker as `python …`: the venv's, as if activated
        env={**os.environ, "PATH": f"{wheel_venv / 'bin'}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "worker-pool.log", "w"),  # noqa: SIM115 (closed with the test)
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if pool.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Beam worker pool did not start") from None
                time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        pool.terminate()
        pool.wait(timeout=30)


def _guard(venv: Path, source: Path, out: Path, store: str, *runner: str) -> str:
    args = ["run", "--input", source, "--output-dir", out, "--sink-policy", "production"]
    args += ["--sink-policy", "tenant:acme", "--lineage-store", store, "--batch-size", "250"]
    done = subprocess.run(
        [venv / "bin" / "lineage-guard", *args, *runner],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=out.parent,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def _outputs(out: Path) -> dict[str, list[Any]]:
    return {p.name: [json.loads(line) for line in p.open()] for p in sorted(out.glob("*.jsonl"))}


def _lineage(store: str, out: Path) -> list[tuple[Any, ...]]:
    with open_store(store, create=False) as opened:
        return sorted(
            (
                s.hop.record_id,
                s.hop.source_offset,
                str(s.hop.outcome),
                str(s.hop.stopped_at),
                tuple(r.rule for r in s.hop.reasons),
                s.hop.content_class,
                s.hop.digest,
                s.pipeline,
                Path(s.destination).relative_to(out).as_posix(),
                str(s.delivery),
            )
            for s in opened.scan()
        )


def test_the_guard_on_prism_with_an_external_worker_pool_matches_the_in_process_runner(
    tmp_path: Path, wheel_venv: Path, prism: str, worker_pool: str
) -> None:
    generated = generate(
        3000, seed=17, faults=Faults(stripped=0.05, test_origin=0.03, other_tenant=0.02)
    )
    source = tmp_path / "crm.jsonl"
    write_json_lines(source, (g.record for g in generated))
    local_out, prism_out = tmp_path / "local" / "out", tmp_path / "prism" / "out"
    local_store = f"sqlite:///{tmp_path / 'local' / 'lineage.db'}"
    prism_store = f"sqlite:///{tmp_path / 'prism' / 'lineage.db'}"
    for folder in (local_out, prism_out):
        folder.mkdir(parents=True)

    local = _guard(wheel_venv, source, local_out, local_store)
    on_prism = _guard(
        wheel_venv, source, prism_out, prism_store, "--runner", "PrismRunner", "--",
        f"--prism_location={prism}", "--environment_type=EXTERNAL",
        f"--environment_config={worker_pool}",
    )  # fmt: skip

    summary = next(line for line in local.splitlines() if " read " in line).split(": ", 1)[1]
    assert summary.split(" in ")[0] in on_prism  # the same counts, e.g. "read 3000, allowed …"
    outputs = _outputs(local_out)
    assert set(outputs) == {"crm.allowed.jsonl", "crm.quarantine.jsonl"}
    assert len(outputs["crm.allowed.jsonl"]) + len(outputs["crm.quarantine.jsonl"]) == 3000
    assert _outputs(prism_out) == outputs
    expected = _lineage(local_store, local_out)
    assert len(expected) == 3000
    assert _lineage(prism_store, prism_out) == expected
    verify = subprocess.run(
        [wheel_venv / "bin" / "lineage-guard", "lineage", "verify", "--lineage-store", prism_store],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
