"""A data engineer's own two-stage Beam pipeline with lineage-guard's transforms in it.

    inbound emails ─► [enrich]  decode, validate provenance, record the hop "enrich" (handed
                                on inside the pipeline: `handed_on → pipeline:draft-replies`),
                                draft an AI reply to each allowed email (parent_record_ids)
                   ─► [production-sink]  emails and replies: validate (a reply's class may
                                not be below its parent's), production policy, write allowed /
                                quarantine files with the hop "production-sink" (`delivered`
                                once the file is flushed)

The enrichment assumes every inbound email was written by a person and marks its replies
AI_ASSISTED; a reply to a SYNTHETIC email is therefore below its parent's class, and the
production sink quarantines it (`class_below_parent`), looking the parent up in the lineage
store where the enrich stage recorded it. `lineage-guard lineage trace ID` shows each email's
hops through both stages, and a reply's hop with its parent's.

Run it:
    python examples/two_stage_pipeline.py INBOUND.jsonl OUT_DIR sqlite:////abs/lineage.db
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from lineage_guard import (
    QUARANTINE,
    DecodeRecords,
    EnforcePolicies,
    FilesIO,
    GuardBatch,
    Lineage,
    ReadFiles,
    RecordHop,
    Records,
    ValidateProvenance,
    WriteGuarded,
)

REPLIES = "replies"  # the source name of the drafted replies (their position: the parent's)


def draft_replies(batch: GuardBatch, drafted_at: datetime) -> Iterator[GuardBatch]:
    """The data engineer's own enrichment: one AI-drafted reply per allowed inbound email."""
    replies, offsets = [], []
    for item in batch.items().items:  # the per-record view of the Arrow batch
        email = item.record
        if not item.allowed or email is None or email.get("direction") != "INBOUND":
            continue
        reply: dict[str, Any] = {
            "record_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "reply:" + email["record_id"])),
            "tenant_id": email["tenant_id"],
            "provenance": {
                "content_class": "AI_ASSISTED",  # the enrichment's assumption (see above)
                "origin_env": email["provenance"]["origin_env"],
                "source_system": "reply-drafter",
                "generator": {
                    "name": "reply-drafter",
                    "model": "gpt-4o",
                    "model_version": "2024-08-06",
                    "parameters_sha256": None,
                },
                "generated_at": drafted_at.isoformat(),
                "disclosure": None,
                "parent_record_ids": [email["record_id"]],
            },
            "contact_id": email["contact_id"],
            "direction": "OUTBOUND",
            "subject": "Re: " + email["subject"],
            "body": "Thank you for your message; we will get back to you shortly.",
            "sent_at": drafted_at.isoformat(),
        }
        replies.append(reply)
        offsets.append(item.source.offset)  # the reply's position: its parent's
    if replies:
        yield GuardBatch.of_records(REPLIES, replies, offsets=offsets)


def build(pipeline: beam.Pipeline, inbound: str, out_dir: str, store: str, run_id: str) -> FilesIO:
    """The two stages; returns the production sink's `FilesIO` (to `finalize()`)."""
    sink = FilesIO.for_inputs([inbound, REPLIES], out_dir)
    drafted_at = datetime.now(UTC).replace(microsecond=0)  # fixed on the launcher

    # stage 1: enrich
    emails = pipeline | "ReadInbound" >> ReadFiles([inbound], batch_size=500)
    decoded = emails | "Decode" >> DecodeRecords()
    checked = decoded.guarded | "Validate" >> ValidateProvenance(lineage_store=store)
    # the dead letters, each record with the violations that stopped it
    _ = (
        checked[QUARANTINE]
        | "DeadLetters" >> Records()
        | "Rules" >> beam.Map(lambda pair: (pair[0].get("record_id"), pair[1].violations))
    )
    enriched = checked.guarded | "EnrichHop" >> RecordHop(
        "enrich", store, handoffs=("draft-replies", "dead-letter"), run_id=run_id
    )
    replies = enriched | "DraftReplies" >> beam.FlatMap(
        draft_replies, drafted_at
    ).with_output_types(GuardBatch)
    forwarded = enriched | "Forward" >> beam.FlatMap(_allowed).with_output_types(GuardBatch)

    # stage 2: production sink
    both = (forwarded, replies) | "Both" >> beam.Flatten().with_output_types(GuardBatch)
    validated = both | "SinkValidate" >> ValidateProvenance(lineage_store=store)
    enforced = validated.guarded | "SinkPolicies" >> EnforcePolicies(["production"])
    lineage = Lineage(store_url=store, stage="production-sink", run_id=run_id)
    _ = enforced.guarded | "Write" >> WriteGuarded(sink, lineage=lineage)
    return sink


def _allowed(batch: GuardBatch) -> Iterator[GuardBatch]:
    """The emails the enrich stage let through go on to the sink (stopped ones stay behind)."""
    allowed = batch.allowed()
    if len(allowed):
        yield allowed


def run(inbound: str, out_dir: str, store: str, beam_args: list[str] | None = None) -> None:
    options = PipelineOptions(["--runner=FnApiRunner", *(beam_args or [])])
    with beam.Pipeline(options=options) as pipeline:
        sink = build(pipeline, inbound, out_dir, store, uuid.uuid4().hex)
    sink.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inbound", help="JSON Lines file of EmailActivity records (absolute)")
    parser.add_argument("out_dir", help="where the production sink writes (absolute)")
    parser.add_argument("store", help="lineage store URL, e.g. sqlite:////abs/lineage.db")
    args, beam_args = parser.parse_known_args()
    run(args.inbound, args.out_dir, args.store, beam_args)


if __name__ == "__main__":
    main()
