"""The streaming guard's offset bookkeeping: what may be committed, and how a partition splits."""

from __future__ import annotations

from apache_beam.io.restriction_trackers import OffsetRange

from lineage_guard.io.kafka_source import UNBOUNDED, PartitionTracker
from lineage_guard.streaming import advance, merge_spans


def test_spans_that_touch_or_overlap_are_joined() -> None:
    assert merge_spans([(5, 9), (0, 5), (12, 14), (8, 10)]) == [(0, 10), (12, 14)]


def test_commit_point_moves_only_over_a_gap_free_run_of_delivered_spans() -> None:
    # [0,5) and [5,9) delivered, [9,12) still being validated, [12,20) delivered early.
    assert advance(0, [(12, 20), (5, 9), (0, 5)]) == (9, [(12, 20)])
    # Once [9,12) is delivered the waiting span joins.
    assert advance(9, [(12, 20), (9, 12)]) == (20, [])
    # Nothing starts at the commit point: nothing moves.
    assert advance(3, [(4, 8)]) == (3, [(4, 8)])
    # A span replayed after a restart (already behind the commit point) changes nothing.
    assert advance(20, [(10, 15)]) == (20, [])


def test_a_partition_is_checkpointed_but_never_split_in_two() -> None:
    tracker = PartitionTracker(OffsetRange(100, UNBOUNDED))
    assert not tracker.is_bounded()
    assert tracker.try_claim(100) and tracker.try_claim(103)  # offsets may have gaps
    assert tracker.try_split(0.5) is None  # no second reader for the same partition
    primary, residual = tracker.try_split(0)  # a checkpoint: the rest resumes later
    assert (primary, residual) == (OffsetRange(100, 104), OffsetRange(104, UNBOUNDED))
    assert not tracker.try_claim(104)
    tracker.check_done()
    assert PartitionTracker(OffsetRange(0, 10)).is_bounded()


def test_a_checkpoint_before_any_claim_leaves_the_whole_range_for_later() -> None:
    tracker = PartitionTracker(OffsetRange(7, UNBOUNDED))
    primary, residual = tracker.try_split(0)
    assert (primary, residual) == (OffsetRange(7, 7), OffsetRange(7, UNBOUNDED))
    tracker.check_done()
