"""The endless mode's options do what `--help` and the README say: `--poll-interval` sets how
long a caught-up partition waits before the streaming job's reader polls again, and
`--exactly-once` is refused there, with the reason."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor

from lineage_guard.cli.main import run as run_command
from lineage_guard.cli.run import _config
from lineage_guard.io.kafka_source import ReadPartitions
from lineage_guard.streaming import build_streaming, streaming_options
from tests.cli import run_cli

KAFKA = ["--bootstrap-servers", "127.0.0.1:1", "--input-topic", "in", "--output-topic", "out"]
KAFKA += ["--quarantine-topic", "q", "--no-lineage"]


def _readers(args: list[str]) -> list[ReadPartitions]:
    context = run_command.make_context("run", [*KAFKA, *args])
    config, until_caught_up = _config(context.params)
    assert not until_caught_up
    pipeline = beam.Pipeline(runner="FnApiRunner")
    build_streaming(pipeline, config)
    found: list[ReadPartitions] = []

    class Readers(PipelineVisitor):  # type: ignore[misc]
        def visit_transform(self, node: Any) -> None:
            fn = getattr(getattr(node.transform, "fn", None), "__class__", None)
            if fn is ReadPartitions:
                found.append(node.transform.fn)

    pipeline.visit(Readers())
    return found


def test_poll_interval_sets_how_long_a_caught_up_partition_waits() -> None:
    [reader] = _readers(["--poll-interval", "1.5"])
    assert reader.idle_resume_s == 1.5
    [reader] = _readers([])
    assert reader.idle_resume_s == 0.1  # the default: `--help` shows it


def test_help_says_what_the_endless_mode_does_with_its_options() -> None:
    shown = run_cli("run", "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert "seconds a caught-up partition waits before it asks Kafka again" in text
    assert "round" not in text  # the endless mode is one streaming job, not rounds
    assert "the endless mode refuses it" in text
    refused = run_cli("run", *KAFKA, "--exactly-once")
    assert refused.returncode == 3
    assert refused.stderr.strip().splitlines() == [
        "lineage-guard: error: --exactly-once is for bounded runs (add --until-caught-up): the "
        "endless streaming job commits offsets from its own state, outside Kafka transactions "
        "(not yet built)."
    ]


def test_flink_bundles_end_after_100_ms_unless_the_user_says_otherwise() -> None:
    """Flink hands a stage's output on when its bundle ends (after 1 s by default): the
    endless guard asks for 100 ms on a Flink or portable job server, and only there."""

    def bundle_option(runner: str, *beam_args: str) -> list[str]:
        context = run_command.make_context("run", [*KAFKA, "--runner", runner, "--", *beam_args])
        config, _ = _config(context.params)
        options = streaming_options(config, prism_location=None).get_all_options(
            retain_unknown_options=True
        )
        return [f"{k}={v}" for k, v in options.items() if k == "max_bundle_time_mills"]

    assert bundle_option("PortableRunner", "--job_endpoint=127.0.0.1:1") == [
        "max_bundle_time_mills=100"
    ]
    assert bundle_option("FlinkRunner", "--flink_job_server_jar=x.jar") == [
        "max_bundle_time_mills=100"
    ]
    assert bundle_option("PortableRunner", "--max_bundle_time_mills=1000") == [
        "max_bundle_time_mills=1000"
    ]
    assert bundle_option("PrismRunner") == []
