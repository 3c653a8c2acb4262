"""Micro-batches: whole groups, capped by rows and, optionally, by padded tokens."""

from __future__ import annotations

from tests.helpers import batch_of, traj


def _batch():
    # groups 0 and 1: 2 rows of 2 + 3 tokens; group 2: 2 rows of 2 + 10 tokens
    return batch_of([traj(0, 1.0), traj(0, 0.0), traj(1, 1.0), traj(1, 0.0),
                     traj(2, 1.0, response=range(10)), traj(2, 0.0, response=range(10))])


def test_rows_only_packs_whole_groups():
    batch = _batch()
    assert batch.group_chunks(list(range(6)), max_rows=4) == [[0, 1, 2, 3], [4, 5]]
    assert batch.group_chunks(list(range(6)), max_rows=1) == [[0, 1], [2, 3], [4, 5]]  # a group is never split


def test_token_budget_counts_rows_times_the_longest_row():
    batch = _batch()
    rows = list(range(6))
    # 4 rows x 5 tokens = 20 fits; adding group 2 makes 6 x 12 = 72
    assert batch.group_chunks(rows, max_rows=8, max_tokens=20) == [[0, 1, 2, 3], [4, 5]]
    assert batch.group_chunks(rows, max_rows=8, max_tokens=19) == [[0, 1], [2, 3], [4, 5]]
    assert batch.group_chunks(rows, max_rows=8, max_tokens=72) == [rows]
    # a group over the budget still forms its own micro-batch
    assert batch.group_chunks([4, 5], max_rows=8, max_tokens=3) == [[4, 5]]
