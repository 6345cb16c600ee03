"""tq.worker.taken: a copy of an attempt taken since the last fence is told apart; the memory is bounded."""

from __future__ import annotations

from tq.worker.taken import KEPT, Taken


def test_a_copy_of_a_taken_attempt_is_told_apart_until_the_fence_clears_them() -> None:
    taken = Taken()
    assert taken.first(7, 1) and not taken.first(7, 1)
    assert taken.first(7, 2)  # another attempt of the same job runs
    taken.clear()
    assert taken.first(7, 1)  # past a fence tq-host may send the same attempt again, and it must run


def test_the_oldest_attempt_is_forgotten_past_the_bound() -> None:
    taken = Taken()
    for job_id in range(KEPT + 1):
        assert taken.first(job_id, 1)
    assert taken.first(0, 1) and not taken.first(KEPT, 1)


def test_a_deleted_inbox_is_reported_once_per_deletion() -> None:
    taken = Taken()
    assert not taken.inbox_lost(0)
    assert taken.inbox_lost(1) and not taken.inbox_lost(1)
    assert taken.inbox_lost(3) and not taken.inbox_lost(3)
