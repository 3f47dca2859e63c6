"""OpenLineage run events for a guard run, so Marquez or DataHub can show the job graph.

A run emits START, RUNNING every `interval_s` (a stream never completes, so watchers need a
heartbeat), and COMPLETE or FAIL, through openlineage-python's own transports (console, file,
http, kafka). Kafka topics are datasets named as OpenLineage's naming spec says: namespace
`kafka://{host}:{port}` of the first bootstrap server, name = the topic. Files are `file`
datasets named by absolute path.

Facets, standard ones through openlineage-python's own classes:
- job `jobType`: processingType `STREAMING` for an endless run, `BATCH` for a bounded one;
  integration `LINEAGE_GUARD`; jobType `JOB`;
- run `lineageGuard_counts` (custom, every event): records by content class, origin environment
  and decision; its JSON schema ships in the package (`facets/LineageGuardCountsRunFacet.json`)
  and `_schemaURL` names it by its versioned `$id`; likewise `lineageGuard_checkpoint` on the
  last event of a run with a signing key;
- run `errorMessage` on FAIL;
- input `dataQualityAssertions` on COMPLETE: one assertion per contract rule (name, column,
  success = no record of the run broke it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    data_quality_assertions_dataset,
    error_message_run,
    job_type_job,
)
from openlineage.client.generated.base import RunFacet

from lineage_guard.lineage.errors import ConfigError, LineageGuardError
from lineage_guard.lineage.private import create_private_file
from lineage_guard.lineage.store import redact_text, redact_url

log = logging.getLogger(__name__)
PRODUCER = "urn:lineage-guard:0.1"
FACET = "lineageGuard_counts"
INTEGRATION = "LINEAGE_GUARD"
UNKNOWN = "UNKNOWN"  # the key for records without a readable class / origin
# Where the custom facets' JSON schemas are published (their `$id`); the same files ship in
# the package, in `lineage_guard/lineage/facets/`.
FACET_SCHEMA_BASE = "https://lineage-guard.dev/spec/facets/1-0-0/"
FACET_SCHEMA_ID = FACET_SCHEMA_BASE + "LineageGuardCountsRunFacet.json"
# 1-1-0: `seq`, `previous` and `envelope` (the chained checkpoint's DSSE envelope) added
CHECKPOINT_SCHEMA_ID = (
    "https://lineage-guard.dev/spec/facets/1-1-0/LineageGuardCheckpointRunFacet.json"
)


def facet_schemas() -> list[dict[str, Any]]:
    """The custom facets' JSON schemas, as shipped in the package."""
    folder = resources.files("lineage_guard.lineage").joinpath("facets")
    return [
        json.loads(entry.read_text(encoding="utf-8"))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".json")
    ]


@attr.define
class LineageGuardCountsRunFacet(RunFacet):
    """Records seen by the run so far: by content class, origin environment and decision."""

    byContentClass: dict[str, int] = attr.field(factory=dict)
    byOriginEnv: dict[str, int] = attr.field(factory=dict)
    byDecision: dict[str, int] = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA_ID + "#/$defs/LineageGuardCountsRunFacet"


@attr.define
class LineageGuardCheckpointRunFacet(RunFacet):
    """The run's signed checkpoint of the lineage chain heads (`lineage.checkpoints`): a copy
    outside the store, so a store rewritten after the run still disagrees with it."""

    at: str = attr.field()
    runId: str = attr.field()
    heads: list[dict[str, Any]] = attr.field(factory=list)
    keyId: str = attr.field(default="")
    signature: str = attr.field(default="")
    seq: int | None = attr.field(default=None)
    previous: dict[str, Any] | None = attr.field(default=None)
    envelope: dict[str, Any] | None = attr.field(default=None)  # verify this one

    @staticmethod
    def _get_schema() -> str:
        return CHECKPOINT_SCHEMA_ID + "#/$defs/LineageGuardCheckpointRunFacet"


CHECKPOINT_FACET = "lineageGuard_checkpoint"


def transport_config(target: str, *, api_key: str | None = None) -> dict[str, Any]:
    """`console`, `file:PATH`, `http(s)://…` or `kafka:TOPIC@BOOTSTRAP` → a transport config;
    `api_key` (HTTP only) is sent as `Authorization: Bearer KEY`."""
    if api_key is not None and not target.startswith(("http://", "https://")):
        raise ConfigError(
            "An OpenLineage API key is sent to an HTTP endpoint only: give an `http(s)://URL` "
            "target, or no key."
        )
    if target == "console":
        return {"type": "console"}
    if target.startswith("file:"):
        return {"type": "file", "log_file_path": target[len("file:") :], "append": True}
    if target.startswith(("http://", "https://")):
        auth = {"type": "api_key", "apiKey": api_key} if api_key is not None else None
        return {"type": "http", "url": target, **({"auth": auth} if auth else {})}
    if target.startswith("kafka:") and "@" in target:
        topic, _, servers = target[len("kafka:") :].partition("@")
        return {
            "type": "kafka",
            "topic": topic,
            "flush": True,
            "config": {"bootstrap.servers": servers},
        }
    raise ConfigError(
        f"Unknown OpenLineage target `{redact_url(target)}`: use `console`, `file:PATH`, "
        "`http(s)://URL` or `kafka:TOPIC@BOOTSTRAP`."
    )


def kafka_dataset_namespace(bootstrap_servers: str) -> str:
    return "kafka://" + bootstrap_servers.split(",")[0].strip()


class RunEmitter:
    """Emits one run's START / RUNNING… / COMPLETE or FAIL events.

    `counts()` returns the run's counters so far: `content_class`, `origin_env` and `decision`
    (name → records) and `rules` (rule → records it stopped); `assertions` are the contract's
    rules with their columns, reported on COMPLETE as data-quality assertions on each input.
    """

    def __init__(
        self,
        *,
        target: str,
        job_namespace: str,
        job_name: str,
        run_id: str,
        inputs: list[tuple[str, str]],
        outputs: list[tuple[str, str]],
        counts: Callable[[], Mapping[str, Mapping[str, int]]],
        bounded: bool,
        assertions: Sequence[tuple[str, str | None]] = (),
        interval_s: float = 60.0,
        client: OpenLineageClient | None = None,
        api_key: str | None = None,
    ) -> None:
        self.client = client or OpenLineageClient(
            config={"transport": transport_config(target, api_key=api_key)}
        )
        if target.startswith("file:"):  # the events name inputs, outputs and counts: 0600
            with contextlib.suppress(OSError):  # the transport says why it cannot write there
                create_private_file(Path(target[len("file:") :]))
        self._target = target  # to hide its password in what this emitter logs
        job_type = job_type_job.JobTypeJobFacet(
            processingType="BATCH" if bounded else "STREAMING",
            integration=INTEGRATION,
            jobType="JOB",
            producer=PRODUCER,
        )
        self.job = Job(namespace=job_namespace, name=job_name, facets={"jobType": job_type})
        self.run_id = run_id
        self.inputs = inputs
        self.outputs = [OutputDataset(namespace=ns, name=name) for ns, name in outputs]
        self.counts = counts
        self.assertions = list(assertions)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def start(self) -> None:
        self._emit(RunState.START)
        self._heartbeat = threading.Thread(target=self._beat, name="openlineage", daemon=True)
        self._heartbeat.start()

    def finish(
        self, error: BaseException | None = None, *, checkpoint: Mapping[str, Any] | None = None
    ) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        extra: dict[str, RunFacet] = {}
        if checkpoint is not None:
            extra[CHECKPOINT_FACET] = LineageGuardCheckpointRunFacet(
                at=checkpoint["at"],
                runId=checkpoint["run_id"],
                heads=list(checkpoint["heads"]),
                keyId=checkpoint["key_id"],
                signature=checkpoint["signature"],
                seq=checkpoint.get("seq"),
                previous=checkpoint.get("previous"),
                envelope=checkpoint.get("envelope"),
                producer=PRODUCER,
            )
        self._emit(RunState.FAIL if error is not None else RunState.COMPLETE, extra, error)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._emit(RunState.RUNNING)

    def _emit(
        self,
        state: RunState,
        extra: Mapping[str, RunFacet] | None = None,
        error: BaseException | None = None,
    ) -> None:
        try:  # lineage metadata must never stop the guard, nor end the heartbeat
            counts = self.counts()
            facets: dict[str, RunFacet] = {
                FACET: LineageGuardCountsRunFacet(
                    byContentClass=_known(counts.get("content_class", {})),
                    byOriginEnv=_known(counts.get("origin_env", {})),
                    byDecision=dict(counts.get("decision", {})),
                    producer=PRODUCER,
                )
            }
            if state == RunState.FAIL and error is not None:
                facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                    message=_describe(error), programmingLanguage="PYTHON", producer=PRODUCER
                )
            input_facets: dict[str, Any] = {}
            if state == RunState.COMPLETE:
                input_facets["dataQualityAssertions"] = self._assertions(counts.get("rules", {}))
            event = RunEvent(
                eventType=state,
                eventTime=datetime.now(UTC).isoformat(),
                run=Run(runId=self.run_id, facets={**facets, **(extra or {})}),
                job=self.job,
                inputs=[
                    InputDataset(namespace=ns, name=name, inputFacets=dict(input_facets))
                    for ns, name in self.inputs
                ],
                outputs=self.outputs,
                producer=PRODUCER,
            )
            self.client.emit(event)
        except Exception as exc:
            shown = redact_text(str(exc), self._target)  # an HTTP error may quote the URL
            log.warning("OpenLineage %s event not emitted: %s", state.value, shown)

    def _assertions(
        self, failed: Mapping[str, int]
    ) -> data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet:
        """One assertion per rule: the contract's rules, then any other rule that stopped a
        record (a sink policy's, `undecodable`). Judged over the whole run, all inputs."""
        Assertion = data_quality_assertions_dataset.Assertion
        listed = [
            Assertion(assertion=rule, success=not failed.get(rule), column=column)
            for rule, column in self.assertions
        ]
        named = {rule for rule, _ in self.assertions}
        extra = [
            Assertion(assertion=rule, success=False)
            for rule in sorted(failed)
            if rule not in named and failed[rule]
        ]
        return data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
            assertions=listed + extra, producer=PRODUCER
        )


def _known(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts with records that had no value (counted under `None`) named `UNKNOWN`."""
    named: dict[str, int] = {}
    for key, n in counts.items():
        name = UNKNOWN if key in ("None", "") else key
        named[name] = named.get(name, 0) + n
    return named


def _describe(error: BaseException) -> str:
    if isinstance(error, LineageGuardError):
        return error.message
    if isinstance(error, KeyboardInterrupt):
        return "The run was stopped (SIGINT or SIGTERM) before it finished."
    return f"{type(error).__name__}: {error}"
