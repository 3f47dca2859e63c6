"""OpenLineage run events for a guard run, so Marquez or DataHub can show the job graph.

A run emits START, RUNNING every `interval_s` (a stream never completes, so watchers need a
heartbeat), and COMPLETE or FAIL, through openlineage-python's own transports (console, file,
http, kafka). Kafka topics are datasets named as OpenLineage's naming spec says: namespace
`kafka://{host}:{port}` of the first bootstrap server, name = the topic. Files are `file`
datasets named by absolute path. Each event carries the custom run facet
`lineageGuard_counts`: records by content class, by origin environment and by decision.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated.base import RunFacet

from lineage_guard.lineage.errors import ConfigError

log = logging.getLogger(__name__)
PRODUCER = "urn:lineage-guard:0.1"
FACET = "lineageGuard_counts"


@attr.define
class LineageGuardCountsRunFacet(RunFacet):
    """Records seen by the run so far: by content class, origin environment and decision."""

    byContentClass: dict[str, int] = attr.field(factory=dict)
    byOriginEnv: dict[str, int] = attr.field(factory=dict)
    byDecision: dict[str, int] = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return "urn:lineage-guard:facets:LineageGuardCountsRunFacet:1"


@attr.define
class LineageGuardCheckpointRunFacet(RunFacet):
    """The run's signed checkpoint of the lineage chain heads (`lineage.checkpoints`): a copy
    outside the store, so a store rewritten after the run still disagrees with it."""

    at: str = attr.field()
    runId: str = attr.field()
    heads: list[dict[str, Any]] = attr.field(factory=list)
    keyId: str = attr.field(default="")
    signature: str = attr.field(default="")

    @staticmethod
    def _get_schema() -> str:
        return "urn:lineage-guard:facets:LineageGuardCheckpointRunFacet:1"


CHECKPOINT_FACET = "lineageGuard_checkpoint"


def transport_config(target: str) -> dict[str, Any]:
    """`console`, `file:PATH`, `http(s)://…` or `kafka:TOPIC@BOOTSTRAP` → a transport config."""
    if target == "console":
        return {"type": "console"}
    if target.startswith("file:"):
        return {"type": "file", "log_file_path": target[len("file:") :], "append": True}
    if target.startswith(("http://", "https://")):
        return {"type": "http", "url": target}
    if target.startswith("kafka:") and "@" in target:
        topic, _, servers = target[len("kafka:") :].partition("@")
        return {
            "type": "kafka",
            "topic": topic,
            "flush": True,
            "config": {"bootstrap.servers": servers},
        }
    raise ConfigError(
        f"Unknown OpenLineage target `{target}`: use `console`, `file:PATH`, "
        "`http(s)://URL` or `kafka:TOPIC@BOOTSTRAP`."
    )


def kafka_dataset_namespace(bootstrap_servers: str) -> str:
    return "kafka://" + bootstrap_servers.split(",")[0].strip()


class RunEmitter:
    """Emits one run's START / RUNNING… / COMPLETE or FAIL events."""

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
        interval_s: float = 60.0,
        client: OpenLineageClient | None = None,
    ) -> None:
        self.client = client or OpenLineageClient(config={"transport": transport_config(target)})
        self.job = Job(namespace=job_namespace, name=job_name)
        self.run_id = run_id
        self.inputs = [InputDataset(namespace=ns, name=name) for ns, name in inputs]
        self.outputs = [OutputDataset(namespace=ns, name=name) for ns, name in outputs]
        self.counts = counts
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
                producer=PRODUCER,
            )
        self._emit(RunState.FAIL if error is not None else RunState.COMPLETE, extra)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._emit(RunState.RUNNING)

    def _emit(self, state: RunState, extra: Mapping[str, RunFacet] | None = None) -> None:
        try:  # lineage metadata must never stop the guard, nor end the heartbeat
            counts = self.counts()
            facet = LineageGuardCountsRunFacet(
                byContentClass=dict(counts.get("content_class", {})),
                byOriginEnv=dict(counts.get("origin_env", {})),
                byDecision=dict(counts.get("decision", {})),
                producer=PRODUCER,
            )
            event = RunEvent(
                eventType=state,
                eventTime=datetime.now(UTC).isoformat(),
                run=Run(runId=self.run_id, facets={FACET: facet, **(extra or {})}),
                job=self.job,
                inputs=self.inputs,
                outputs=self.outputs,
                producer=PRODUCER,
            )
            self.client.emit(event)
        except Exception as exc:
            log.warning("OpenLineage %s event not emitted: %s", state.value, exc)
